"""A subscriber worker for the tests: prints READY, then a JSON summary.

Receives until it has ``--count`` events or ``--idle`` seconds pass without one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sys
import time
from typing import Any

from circus_events import AsyncBus, Bus, Gap


def summary(events: list[tuple[str, Any]], gaps: list[Gap], last_seq: int = 0) -> str:
    return json.dumps(
        {
            "events": events,
            "last_seq": last_seq,
            "gaps": [g._asdict() for g in gaps],
            "missed": sum(g.missed for g in gaps),
        }
    )


def run_sync(args: argparse.Namespace) -> None:
    gaps: list[Gap] = []
    events: list[tuple[str, Any]] = []
    last_seq = 0
    with Bus(dir=args.dir, worker=args.worker, on_gap=gaps.append) as bus:
        subscription = bus.subscribe(args.pattern)
        assert bus.sync(10), "bridge did not confirm the subscription"
        print("READY", flush=True)
        deadline = time.monotonic() + args.timeout
        while len(events) < args.count and time.monotonic() < deadline:
            try:
                event = subscription.get(timeout=args.idle)
            except queue.Empty:
                break
            events.append((event.channel, event.data))
            last_seq = event.seq
            if args.stop_on is not None and event.data == args.stop_on:
                break
        print(summary(events, gaps, last_seq), flush=True)


async def run_async(args: argparse.Namespace) -> None:
    gaps: list[Gap] = []
    events: list[tuple[str, Any]] = []
    async with AsyncBus(dir=args.dir, worker=args.worker, on_gap=gaps.append) as bus:
        subscription = bus.subscribe(args.pattern)
        assert await bus.sync(10), "bridge did not confirm the subscription"
        print("READY", flush=True)
        deadline = time.monotonic() + args.timeout
        while len(events) < args.count and time.monotonic() < deadline:
            try:
                event = await subscription.get(timeout=args.idle)
            except TimeoutError:
                break
            events.append((event.channel, event.data))
        print(summary(events, gaps), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--count", type=int, default=10**9)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--kind", choices=["sync", "async"], default="sync")
    parser.add_argument("--stop-on", help="exit after an event whose data is this string")
    args = parser.parse_args()
    if args.kind == "sync":
        run_sync(args)
    else:
        asyncio.run(run_async(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
