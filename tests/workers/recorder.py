"""A long-running worker for end-to-end tests: appends every event it gets to a file.

Usage: recorder.py OUTFILE PATTERN...; one JSON line per event, after a
``{"ready": worker}`` line once its subscriptions are confirmed.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from circus_events import Bus, Event


def main() -> None:
    path, patterns = sys.argv[1], sys.argv[2:]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    with open(path, "a", encoding="utf-8") as out, Bus() as bus:

        def record(event: Event) -> None:
            line = {"channel": event.channel, "data": event.data, "host": event.host}
            with lock:
                out.write(json.dumps({**line, "origin": event.origin, "me": bus.worker}) + "\n")
                out.flush()

        for pattern in patterns:
            bus.on(pattern)(record)
        while not bus.sync(1):  # the bridge is not up yet: keep asking
            if stop.is_set():
                return
        with lock:
            out.write(json.dumps({"ready": bus.worker}) + "\n")
            out.flush()
        stop.wait()


if __name__ == "__main__":
    main()
