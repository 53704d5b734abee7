"""``circus-events bench --paced``: many paced publishers, nothing in bursts.

Theory of operation
-------------------
The throughput runs of :mod:`.harness` have one publisher sending as fast
as it can, so the client's burst batching carries almost every message. A
web application is the other case: many workers, each publishing now and
then. This run starts one redis-server (free port, never 6379) and two
bridges as simulated hosts A and B (their own ``CIRCUS_EVENTS_HOST``), then
for each offered load, and each system in turn (interleaved, so that noise
from the rest of the machine hits both alike):

* ``publishers`` processes on host A, each sending ``load / publishers``
  msg/s at a steady pace to its own channel and, one message in four, to a
  shared one (:mod:`.paced_workers`);
* ``subscribers`` processes on host B, each subscribed to every channel of
  the run with one pattern;
* circus-events (bridge A -> Redis -> bridge B) against raw redis-py doing
  the same (``PUBLISH`` per message, ``PSUBSCRIBE``), in the same run.

Figures per system and load (medians over ``repeats``): the achieved
offered rate, the delivered fraction (messages received within
:data:`SETTLE_SECONDS` of the last publish / published x subscribers),
p50/p99/p999 one-way latency after the warm-up, and CPU seconds per 10,000
deliveries split by role: publishers and subscribers (``process_time`` of
each, all threads), bridges and redis-server (``/proc/<pid>/stat``, 10 ms
ticks). The *carried load* of a system is the highest offered load it
carries with everything delivered and p99 under :data:`CARRIED_P99_MS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from array import array
from typing import Any, Final

from .harness import Progress, expect
from .paced_report import print_paced, write_paced_chart
from .paced_workers import (
    PacedPublished,
    PacedReceived,
    PacedSpec,
    ce_paced_publisher_main,
    ce_paced_subscriber_main,
    raw_paced_publisher_main,
    raw_paced_subscriber_main,
)
from .stack import running_stack
from .workers import SETUP_TIMEOUT, Workers, latency_figures, process_cpu_ns

__all__ = ["CARRIED_P99_MS", "SYSTEMS", "PacedOptions", "bench_paced", "run_paced"]

#: A load is carried with everything delivered and p99 under this.
CARRIED_P99_MS: Final = 10.0
#: Subscribers stop this long after the last publish; later receipts are lost.
SETTLE_SECONDS: Final = 1.5
#: Publishers start together this long after "go" (every process is ready).
START_DELAY: Final = 0.05
SYSTEMS: Final = {
    "ce": "circus-events pub/sub",
    "ce-late": "circus-events pub/sub, subscribers with max_delay",
    "raw": "raw redis-py PUBLISH/PSUBSCRIBE",
}
#: ``max_delay`` (s) of the ``ce-late`` subscribers: latency bounded in time
#: past saturation, at the price of events (each reported as a ``late`` gap).
LATE_MAX_DELAY: Final = 0.5


@dataclasses.dataclass(frozen=True)
class PacedOptions:
    """What one paced run measures."""

    publishers: int = 8
    subscribers: int = 4
    loads: tuple[float, ...] = (1000.0, 2000.0, 4000.0, 8000.0, 12000.0, 16000.0)
    seconds: float = 4.0  # per measurement
    warmup_s: float = 0.5
    repeats: int = 3
    systems: tuple[str, ...] = ("ce", "raw")
    quick: bool = False
    keep: bool = False

    @classmethod
    def preset(cls, quick: bool = False) -> PacedOptions:
        if quick:
            return cls(
                publishers=4, subscribers=2, loads=(500.0, 2000.0), seconds=1.0,
                warmup_s=0.2, repeats=1, quick=True,
            )  # fmt: skip
        return cls()


def measure(stack: Any, spec: PacedSpec) -> dict[str, Any]:
    """One system at one load: start everyone, go, collect, figures."""
    ce = spec.system != "raw"
    workers = Workers(stack.context)
    hubs = {"redis": stack.redis.pid}
    if ce:
        hubs |= {"bridge-a": stack.bridges["a"].pid, "bridge-b": stack.bridges["b"].pid}
    try:
        sub_main = ce_paced_subscriber_main if ce else raw_paced_subscriber_main
        pub_main = ce_paced_publisher_main if ce else raw_paced_publisher_main
        subs = [workers.start(sub_main, spec, i) for i in range(spec.subscribers)]
        for i, conn in enumerate(subs):
            expect(conn, SETUP_TIMEOUT, f"subscriber {i} to be ready")
        pubs = [workers.start(pub_main, spec, i) for i in range(spec.publishers)]
        for i, conn in enumerate(pubs):
            expect(conn, SETUP_TIMEOUT, f"publisher {i} to be ready")
        cpu_before = {role: process_cpu_ns(pid) for role, pid in hubs.items()}
        start_ns = time.monotonic_ns() + int(START_DELAY * 1e9)
        for conn in (*subs, *pubs):
            conn.send(start_ns)
        wait = SETUP_TIMEOUT + spec.messages / spec.rate * 3
        published: list[PacedPublished] = [
            expect(conn, wait, f"publisher {i} to finish") for i, conn in enumerate(pubs)
        ]
        deadline = time.monotonic() + SETTLE_SECONDS
        received = _collect(subs, deadline)
        cpu_after = {role: process_cpu_ns(pid) for role, pid in hubs.items()}
    finally:
        workers.close()
    return figures(spec, published, received, cpu_before, cpu_after)


def _collect(subs: list[Any], deadline: float) -> list[PacedReceived]:
    """Subscriber results: those done by ``deadline``, then the rest once told to stop."""
    results: dict[int, PacedReceived] = {}
    for i, conn in enumerate(subs):
        if conn.poll(max(0.0, deadline - time.monotonic())):
            results[i] = expect(conn, 0, f"subscriber {i}")
    for i, conn in enumerate(subs):
        if i not in results:
            with contextlib.suppress(OSError):
                conn.send("stop")
    for i, conn in enumerate(subs):
        if i not in results:
            results[i] = expect(conn, SETUP_TIMEOUT, f"subscriber {i} to stop")
    return [results[i] for i in range(len(subs))]


def figures(
    spec: PacedSpec,
    published: list[PacedPublished],
    received: list[PacedReceived],
    cpu_before: dict[str, int],
    cpu_after: dict[str, int],
) -> dict[str, Any]:
    total = sum(p.published for p in published)
    first = min(p.first_ns for p in published)
    last = max(p.last_ns for p in published)
    span = max(last - first, 1) / 1e9
    deliveries = sum(r.received for r in received)
    expected = total * spec.subscribers
    samples: list[int] = []
    for r in received:
        samples.extend(array("q", r.latencies))
    cpu = {
        "publishers": sum(p.cpu_ns for p in published) / 1e9,
        "subscribers": sum(r.cpu_ns for r in received) / 1e9,
        "redis": (cpu_after["redis"] - cpu_before["redis"]) / 1e9,
        "bridges": sum(cpu_after[k] - cpu_before[k] for k in cpu_after if k != "redis") / 1e9,
    }
    per_10k = {k: v / deliveries * 10_000 if deliveries else float("nan") for k, v in cpu.items()}
    lat = latency_figures(samples)
    return {
        "system": spec.system,
        "offered_per_s": spec.rate * spec.publishers,
        "achieved_per_s": total / span,
        "published": total,
        "expected": expected,
        "delivered": deliveries,
        "delivered_fraction": deliveries / expected if expected else float("nan"),
        "reported_missed": sum(r.reported_missed for r in received),
        "latency_ms": {k: lat[k] / 1000 for k in ("p50", "p99", "p999", "max") if k in lat},
        "cpu_s": cpu,
        "cpu_s_per_10k": sum(per_10k.values()),
        "cpu_s_per_10k_by_role": per_10k,
    }


def summarise(options: PacedOptions, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per system and load, the carried load, the ratios to raw."""
    summary: dict[str, Any] = {}
    for system in options.systems:
        rows = []
        for load in options.loads:
            mine = [r for r in runs if r["system"] == system and r["offered_per_s"] == load]
            if mine:
                rows.append(_median_row(load, mine))
        carried = [r["offered_per_s"] for r in rows if _carried(r)]
        summary[system] = {
            "label": SYSTEMS[system],
            "by_load": rows,
            "carried_per_s": max(carried) if carried else 0.0,
        }
    ratios = []
    if "ce" in summary and "raw" in summary:
        raw_rows = {r["offered_per_s"]: r for r in summary["raw"]["by_load"]}
        for row in summary["ce"]["by_load"]:
            raw = raw_rows.get(row["offered_per_s"])
            if raw is None:
                continue
            ratios.append({
                "offered_per_s": row["offered_per_s"],
                "cpu": _ratio(row["cpu_s_per_10k"], raw["cpu_s_per_10k"]),
                "p99": _ratio(row["latency_ms"].get("p99"), raw["latency_ms"].get("p99")),
            })  # fmt: skip
        raw_carried = summary["raw"]["carried_per_s"]
        summary["carried_ratio"] = _ratio(summary["ce"]["carried_per_s"], raw_carried)
    summary["ratios"] = ratios
    return summary


def _median_row(load: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(*path: str) -> float:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value.get(key) if value is not None else None
            if value is not None:
                values.append(float(value))
        return statistics.median(values) if values else float("nan")

    roles = ("publishers", "bridges", "redis", "subscribers")
    return {
        "offered_per_s": load,
        "achieved_per_s": med("achieved_per_s"),
        "delivered_fraction": med("delivered_fraction"),
        "latency_ms": {k: med("latency_ms", k) for k in ("p50", "p99", "p999", "max")},
        "cpu_s_per_10k": med("cpu_s_per_10k"),
        "cpu_s_per_10k_by_role": {k: med("cpu_s_per_10k_by_role", k) for k in roles},
        "repeats": len(runs),
    }


def _carried(row: dict[str, Any]) -> bool:
    p99 = row["latency_ms"]["p99"]
    return bool(row["delivered_fraction"] >= 1.0 and not math.isnan(p99) and p99 < CARRIED_P99_MS)


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base or math.isnan(value) or math.isnan(base):
        return None
    return value / base


def run_paced(options: PacedOptions) -> dict[str, Any]:
    """Measure every load and system of ``options``; the report (JSON-ready dict)."""
    started = time.monotonic()
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["zmq", "redis", "circus_events", "circus_events.client"])
    workdir = tempfile.mkdtemp(prefix="cep-", dir="/tmp")  # short: AF_UNIX paths <= 107 bytes
    total = len(options.loads) * options.repeats * len(options.systems)
    progress = Progress(total)
    runs: list[dict[str, Any]] = []
    serial = 0
    try:
        with running_stack(workdir, context, ("a", "b"), proxy=False) as stack:
            if stack.unavailable:
                raise RuntimeError("; ".join(stack.unavailable.values()))
            for load in options.loads:
                for _ in range(options.repeats):
                    for system in options.systems:  # interleaved: noise hits both alike
                        serial += 1
                        rate = load / options.publishers
                        spec = PacedSpec(
                            system=system, run=f"r{serial}", publishers=options.publishers,
                            subscribers=options.subscribers, rate=rate,
                            messages=max(1, int(rate * options.seconds)),
                            warmup_s=options.warmup_s, pub_bus=stack.target("a"),
                            sub_bus=stack.target("b"), redis_port=stack.redis.port,
                            max_delay=LATE_MAX_DELAY if system == "ce-late" else None,
                        )  # fmt: skip
                        result = measure(stack, spec)
                        runs.append(result)
                        progress.step(_describe(result))
    finally:
        if options.keep:
            progress.note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "config": dataclasses.asdict(options),
        "environment": {
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "python": sys.version.split()[0],
            "wall_seconds": time.monotonic() - started,
        },
        "summary": summarise(options, runs),
        "runs": runs,
    }


def _describe(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return (
        f"paced {r['system']:<7} {r['offered_per_s']:>7,.0f} msg/s offered "
        f"({r['achieved_per_s']:,.0f} achieved): delivered {r['delivered_fraction']:.1%}, "
        f"p50 {lat.get('p50', float('nan')):.2f} ms, p99 {lat.get('p99', float('nan')):.2f} ms, "
        f"CPU {r['cpu_s_per_10k']:.2f} s/10k"
    )


def bench_paced(options: PacedOptions, out_dir: str, charts: bool = True) -> dict[str, Any]:
    """Run, then write ``paced.json`` (and the chart) to ``out_dir`` and print the table."""
    report = run_paced(options)
    os.makedirs(out_dir, exist_ok=True)
    chart = write_paced_chart(report, out_dir) if charts else None
    report["chart"] = chart
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    json_path = os.path.join(out_dir, "paced.json")
    with open(json_path, "w") as out:
        json.dump(report, out, indent=1, allow_nan=True)
        out.write("\n")
    print_paced(report, json_path, chart)
    return report
