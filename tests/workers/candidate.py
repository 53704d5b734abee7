"""A leader-election candidate under circus: reports its terms, and when SIGTERM came.

Usage: candidate.py OUTFILE ROLE TTL WORKER [--die-on-sigterm]. One JSON line each:

* ``{"w", "e": "elected"|"lost", "token", "since", "until", "reason"}`` (the
  ``on_change`` reports);
* ``{"w", "e": "sigterm", "t"}`` when SIGTERM arrives; then it closes its bus
  (a clean hand-over), or with ``--die-on-sigterm`` dies of the signal
  without closing anything (the bridge sees its inbox go).

Times are ``time.monotonic()``, one clock for every process on the host.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from circus_events import Bus


def main() -> None:
    path, role, ttl, worker = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    die = "--die-on-sigterm" in sys.argv[5:]
    stop = threading.Event()
    lock = threading.Lock()
    with open(path, "a", encoding="utf-8") as out, Bus(worker=worker) as bus:

        def log(**record: Any) -> None:
            with lock:
                out.write(json.dumps({"w": bus.worker, **record}) + "\n")
                out.flush()

        def on_sigterm(*_: object) -> None:
            log(e="sigterm", t=time.monotonic())
            if die:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            stop.set()

        signal.signal(signal.SIGTERM, on_sigterm)
        lead = bus.leader(role, ttl=ttl)

        @lead.on_change
        def report(change: Any) -> None:
            log(
                e="elected" if change.elected else "lost",
                token=change.token,
                since=change.since,
                until=change.until,
                reason=change.reason,
            )

        stop.wait()
    # Leaving ``with Bus()`` closed the bus, which released the role.


if __name__ == "__main__":
    main()
