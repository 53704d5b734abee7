"""A publisher worker for the tests: publishes {"i": n} cycling over channels."""

from __future__ import annotations

import argparse
import sys
import time

from circus_events import Bus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--worker", default="publisher")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--channels", default="orders.paid")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="messages/s; 0: as fast as possible"
    )
    parser.add_argument("--host", default=None)
    parser.add_argument("--tag", default=None, help="added to each payload as 'p'")
    args = parser.parse_args()
    channels = args.channels.split(",")
    with Bus(dir=args.dir, worker=args.worker, host=args.host, publish_timeout=30) as bus:
        start = time.monotonic()
        for n in range(args.count):
            if args.rate:
                due = start + n / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the publish rate, not synchronisation
            data = {"i": n} if args.tag is None else {"i": n, "p": args.tag}
            bus.publish(channels[n % len(channels)], data)
        ok = bus.flush(30)
    print("DONE" if ok else "NOT-FLUSHED", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
