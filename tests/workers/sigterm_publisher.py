"""A worker that publishes flat out and closes its bus from a SIGTERM handler,
as circus stops workers: the handler interrupts publish() on the same thread."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from circus_events import Bus, UsageError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--publish-in-handler", action="store_true")
    args = parser.parse_args()
    bus = Bus(dir=args.dir, worker="sigterm", publish_timeout=30)

    def stop(*_: Any) -> None:
        code = 0
        if args.publish_in_handler:
            try:
                bus.publish("w.last", "bye")  # works, or refuses: never hangs
            except UsageError:
                pass
            except Exception:  # any other error fails the test
                code = 3
        bus.close()
        os._exit(code)

    signal.signal(signal.SIGTERM, stop)
    i = 0
    while True:
        bus.publish("w.x", i)
        i += 1
        if i == 1000:
            print("READY", flush=True)


if __name__ == "__main__":
    main()
    sys.exit(1)
