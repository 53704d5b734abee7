"""A subscriber worker that counts raw events (large payloads) instead of keeping them.

Prints READY once subscribed, then, after an event whose payload is ``STOP``
or ``--idle`` seconds without one, a JSON summary: events received, the seq
of the last one, what its gap reports say it missed, and whether the
sequence numbers it saw only grew.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys

from circus_events import Bus, Gap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    gaps: list[Gap] = []
    received = last_seq = 0
    in_order = True
    # The queue holds 1,000 events of any size (512 KiB ones: 512 MiB): what is
    # under test is the bridge's budget, not this worker's own queue bound.
    with Bus(
        dir=args.dir,
        worker=args.worker,
        codec="raw",
        on_gap=gaps.append,
        queue_size=1000,
        queue_max_bytes=1024**3,
    ) as bus:
        subscription = bus.subscribe(args.pattern)
        assert bus.sync(10), "bridge did not confirm the subscription"
        print("READY", flush=True)
        while True:
            try:
                event = subscription.get(timeout=args.idle)
            except queue.Empty:
                break
            received += 1
            in_order &= event.seq > last_seq
            last_seq = event.seq
            if event.data == b"STOP":
                break
    missed = sum(g.missed for g in gaps)
    summary = {"received": received, "last_seq": last_seq, "missed": missed, "in_order": in_order}
    print(json.dumps(summary), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
