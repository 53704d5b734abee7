"""Only one worker in the whole cluster runs the billing job; its writes are fenced.

Run it in several workers (and on several hosts, each with its bridge):
every worker is a candidate, one leads at a time, and a leader that was
paused past its term (GC, SIGSTOP, a frozen VM) cannot overwrite what its
successor wrote: the store refuses its stale token.

    [watcher:billing]
    cmd = python examples/leader/billing.py
    numprocesses = 3

It needs redis-py and a Redis for the fenced store (``BILLING_REDIS_URL``,
default redis://127.0.0.1:6379/0); the bus itself needs only its bridge.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import redis

from circus_events import Bus
from circus_events.fencing import fenced_write


def run_billing_once(store: redis.Redis, token: int, worker: str) -> bool:
    """One round of "the job": a write the store accepts only from the newest term."""
    return fenced_write(store, "billing:last-run", f"{time.time():.3f} {worker}", token)


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # close() hands over at once
    store = redis.Redis.from_url(os.environ.get("BILLING_REDIS_URL", "redis://127.0.0.1:6379/0"))
    with Bus() as bus, bus.leader("billing", ttl=10.0) as lead:

        @lead.on_change
        def changed(change: object) -> None:
            print(f"{bus.worker}: {change}", flush=True)

        while not stop.is_set():
            if not lead.wait(timeout=1.0):
                continue  # another worker leads; lead.holder says who
            if lead.is_leader and not run_billing_once(store, lead.token, bus.worker):
                print(f"{bus.worker}: a newer leader wrote first; standing by", flush=True)
            stop.wait(2.0)


if __name__ == "__main__":
    main()
