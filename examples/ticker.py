"""A sync worker (threads, pre-fork servers): publishes a tick, answers pings.

Run it under circus or supervisor next to a bridge; ``Bus()`` takes its
socket directory, namespace and host from the ``CIRCUS_EVENTS_*`` variables.
"""

from __future__ import annotations

import os
import signal
import threading

from circus_events import Bus, Event

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())

with Bus() as bus:

    @bus.on("demo.ping")
    def answer(event: Event) -> None:
        """A direct message from another worker: answer it, on any host."""
        bus.send_to(event.origin, "demo.pong", {"to": event.data, "from": bus.worker})

    count = 0
    interval = float(os.environ.get("DEMO_TICK_INTERVAL", "1.0"))
    while not stop.wait(interval):
        count += 1
        bus.publish("demo.tick", {"n": count, "from": bus.worker})
