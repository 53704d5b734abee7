"""The fault loop for minutes: what reaches whom while bridges, Redis and subscribers fail.

2 hosts (bridge processes), 3 publishers (2 on host A, 1 on host B, each
``--rate`` msg/s), 4 subscribers (2 per host), a private redis-server with
AOF (``appendfsync always``). Faults one at a time, drawn at random: bridge
SIGKILL (restarted after the fault's length) and SIGSTOP, Redis SIGKILL and
restart, subscriber SIGSTOP; each lasts 0.2 to 2 s, with 0.5 to 3 s of
traffic between two. See :mod:`circus_events.bench.chaos`.

Prints one line per fault, then per subscriber and publisher what was
received, repeated, out of order, reported missed and lost, and the
verdicts: stream mode, every subscriber never stopped gets everything once,
in order; pub/sub mode, received plus reported missed equals published.

Usage::

    .venv/bin/python benchmarks/chaos.py --minutes 10
    .venv/bin/python benchmarks/chaos.py --minutes 2 --mode pubsub --rate 300
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time

from circus_events.bench.chaos import Chaos, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="faults for this long [10]")
    parser.add_argument("--mode", choices=("stream", "pubsub"), default="stream")
    parser.add_argument("--rate", type=float, default=300.0, help="msg/s per publisher [300]")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the result here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    pauses = random.Random(seed + 1)
    print(f"chaos: mode {args.mode}, {args.rate:g} msg/s x 3 publishers, seed {seed}", flush=True)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="ce-chaos-") as workdir,
        Chaos(
            workdir,
            mode=args.mode,
            rate=args.rate,
            seed=seed,
            hold=(0.2, 2.0),
            log=lambda what: print(f"{time.monotonic() - started:8.1f}s  {what}", flush=True),
        ) as chaos,
    ):
        end = started + args.minutes * 60
        while time.monotonic() < end:
            chaos.fault()
            time.sleep(pauses.uniform(0.5, 3.0))  # traffic between faults
        result = chaos.finish()
    elapsed = time.monotonic() - started
    report(result, elapsed)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**result, "seconds": elapsed, "seed": seed}, out, indent=1)
    problems = check(result)
    for problem in problems:
        print(f"FAIL {problem}")
    print("verdict:", "OK" if not problems else f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


def report(result: dict[str, object], seconds: float) -> None:
    published = result["published"]
    subscribers = result["subscribers"]
    assert isinstance(published, dict) and isinstance(subscribers, dict)
    total = sum(p["published"] for p in published.values())
    faults = result["faults"]
    assert isinstance(faults, dict)
    print(
        f"\n{seconds:.0f} s, {sum(faults.values())} faults "
        f"({', '.join(f'{k} {v}' for k, v in faults.items())}), {total} messages published"
    )
    print(f"subscribers stopped at least once: {', '.join(result['stopped']) or 'none'}")  # type: ignore[arg-type]
    head = ("received", "repeats", "disorder", "missed", "lost")
    print(f"{'subscriber':<10} " + " ".join(f"{h:>10}" for h in head))
    for name, sub in subscribers.items():
        origins = sub["origins"]
        received = sum(o["distinct"] for o in origins.values())
        repeats = sum(o["repeats"] for o in origins.values())
        disorder = sum(o["out_of_order"] for o in origins.values())
        missed = sum(o["missed"] for o in origins.values())
        lost = total - received
        figures = (received, repeats, disorder, missed, lost)
        print(f"{name:<10} " + " ".join(f"{f:>10}" for f in figures))


if __name__ == "__main__":
    main()
