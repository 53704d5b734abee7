"""Many paced publishers: circus-events against raw redis-py when nothing comes in bursts.

Eight publisher processes on host A, each sending at a steady pace (sleeping
between publishes) to its own channel and to shared ones, four subscriber
processes on host B taking every channel with one pattern, at stepped
offered loads; the same processes with raw redis-py (``PUBLISH`` per
message, ``PSUBSCRIBE``) in the same run. See
:mod:`circus_events.bench.paced` for what is measured and how.

Usage::

    .venv/bin/python benchmarks/paced.py
    .venv/bin/python benchmarks/paced.py --quick
    .venv/bin/python benchmarks/paced.py --loads 2000,4000,8000 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses

from circus_events.bench.paced import SYSTEMS, PacedOptions, bench_paced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (the test suite's)")
    parser.add_argument("--publishers", type=int, help="publisher processes [8]")
    parser.add_argument("--subscribers", type=int, help="subscriber processes [4]")
    parser.add_argument("--loads", help="offered loads, msg/s, comma-separated")
    parser.add_argument("--seconds", type=float, help="seconds per measurement [4]")
    parser.add_argument("--repeats", type=int, help="measurements per system and load [3]")
    parser.add_argument("--systems", help="ce,ce-late,raw [ce,raw]; ce-late: max_delay 0.5 s")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the bridge and Redis logs")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    changes: dict[str, object] = {"keep": args.keep}
    for name in ("publishers", "subscribers", "seconds", "repeats"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.loads:
        changes["loads"] = tuple(float(x) for x in args.loads.split(","))
    if args.systems:
        changes["systems"] = tuple(args.systems.split(","))
        unknown = set(changes["systems"]) - set(SYSTEMS)
        if unknown:
            parser.error(f"unknown systems {sorted(unknown)}: choose from {', '.join(SYSTEMS)}")
    options = dataclasses.replace(PacedOptions.preset(args.quick), **changes)  # type: ignore[arg-type]
    bench_paced(options, args.out, charts=not args.no_charts)


if __name__ == "__main__":
    main()
