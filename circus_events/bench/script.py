"""The command line of the scripts in ``benchmarks/``: one part of the harness, alone.

Each script names its cases (its own short names -> harness systems, per
relay mode) and its defaults; this builds the :class:`Options` and runs
:func:`harness.bench`, so the scripts measure exactly what ``circus-events
bench`` measures, with the same workers, figures, report and JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence

from .cases import Options
from .harness import bench


@dataclasses.dataclass(frozen=True)
class Script:
    """One script in ``benchmarks/``: its cases and its defaults."""

    description: str
    #: relay mode -> {case name on the command line -> harness system}; one mode: no --mode.
    cases: Mapping[str, Mapping[str, str]]
    default_cases: str
    subscribers: int = 4
    rate: float = 5000.0
    messages: int = 200_000
    quick_messages: int = 50_000
    out: str = "bench-results"


@dataclasses.dataclass(frozen=True)
class Run:
    """What one invocation of a script asks for."""

    options: Options
    out: str
    charts: bool
    json_path: str | None


def parse(script: Script, argv: Sequence[str] | None = None) -> Run:
    """The options one invocation of ``script`` measures, and where its results go."""
    modes = list(script.cases)
    parser = argparse.ArgumentParser(description=script.description)
    parser.add_argument("--quick", action="store_true", help="a short run")
    if len(modes) > 1:
        parser.add_argument("--mode", choices=modes, default=modes[0], help=f"[{modes[0]}]")
    parser.add_argument(
        "--cases",
        default=script.default_cases,
        help="comma-separated, from "
        + ", ".join(dict.fromkeys(c for cases in script.cases.values() for c in cases))
        + f" [{script.default_cases}]",
    )
    parser.add_argument(
        "--subscribers", type=int, default=script.subscribers, help=f"[{script.subscribers}]"
    )
    parser.add_argument(
        "--messages",
        type=int,
        help=f"published per throughput run [{script.messages}; --quick {script.quick_messages}]",
    )
    parser.add_argument("--repeats", type=int, help="throughput runs per case [3; --quick 1]")
    parser.add_argument(
        "--rate", type=float, default=script.rate, help=f"latency runs: msg/s [{script.rate:g}]"
    )
    parser.add_argument(
        "--latency-seconds", type=float, help="latency run length, s [4; --quick 1.5]"
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="latency: first messages left out [100]"
    )
    parser.add_argument(
        "--out", default=script.out, help=f"bench.json and charts here [{script.out}]"
    )
    parser.add_argument("--json", metavar="PATH", help="also write bench.json here")
    parser.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (bridge logs)")
    args = parser.parse_args(argv)
    cases = script.cases[args.mode if len(modes) > 1 else modes[0]]
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in cases]
    if unknown or not names:
        parser.error(
            f"unknown case(s): {', '.join(unknown) or '(none)'} (known: {', '.join(cases)})"
        )
    options = Options(
        workers=(args.subscribers,),
        messages=args.messages or (script.quick_messages if args.quick else script.messages),
        repeats=args.repeats or (1 if args.quick else 3),
        rate=args.rate,
        latency_seconds=args.latency_seconds or (1.5 if args.quick else 4.0),
        warmup=args.warmup,
        peers=False,
        faults=False,
        quick=args.quick,
        keep=args.keep,
        systems=tuple(cases[c] for c in names),
    )
    return Run(options, args.out, not args.no_charts, args.json)


def main(script: Script, argv: Sequence[str] | None = None) -> None:
    run = parse(script, argv)
    try:
        report = bench(run.options, run.out, run.charts)
    except RuntimeError as exc:
        sys.exit(f"{sys.argv[0]}: {exc}")
    if run.json_path:
        with open(run.json_path, "w") as out:
            json.dump(report, out, indent=1, allow_nan=True)
            out.write("\n")
