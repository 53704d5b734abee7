"""Shared benchmark pieces.

The worker processes, the figures and the process helpers live in
:mod:`circus_events.bench.workers` (re-exported here), so that
``circus-events bench`` works from an installed copy too; the scripts in this
directory run as ``python benchmarks/x.py`` and import ``_common``.

What only ``local_fanout.py`` and ``cross_host.py`` share (one publisher ->
N subscribers per run, figures per run, the JSON report's common parts) is
defined here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any, Self

import zmq

from circus_events.bench.infra import wait_for_bridge
from circus_events.bench.workers import (
    IDLE_SECONDS,
    PAYLOAD_BYTES,
    SETUP_TIMEOUT,
    STAMP,
    BusTarget,
    PublisherResult,
    SubscriberResult,
    Workers,
    WorkerSpec,
    ce_handler_subscriber_main,
    ce_publisher_main,
    ce_subscriber_main,
    json_pad,
    latency_figures,
    pace,
    percentile,
    process_cpu_ns,
    stamp_of,
    thread_cpu_ns,
)

__all__ = [
    "IDLE_SECONDS",
    "PAYLOAD_BYTES",
    "SETUP_TIMEOUT",
    "STAMP",
    "BusTarget",
    "PublisherResult",
    "RunResult",
    "SubscriberResult",
    "WorkerSpec",
    "Workers",
    "ce_handler_subscriber_main",
    "ce_publisher_main",
    "ce_subscriber_main",
    "environment",
    "json_pad",
    "latency_figures",
    "pace",
    "percentile",
    "process_cpu_ns",
    "run_config",
    "run_workers",
    "stamp_of",
    "start_workers",
    "temp_workdir",
    "thread_cpu_ns",
    "wait_for_bridge",
    "write_json",
]


# -- one run: 1 publisher -> N subscribers ---------------------------------------------


def start_workers(
    workers: Workers,
    publisher_main: Callable[..., None],
    subscriber_main: Callable[..., None],
    spec: WorkerSpec,
    subscribers: int,
) -> tuple[Connection, list[Connection]]:
    """Start the subscribers, then the publisher; return once every one is ready."""
    subs = [workers.start(subscriber_main, spec, i) for i in range(subscribers)]
    pub = workers.start(publisher_main, spec)
    workers.expect(pub, SETUP_TIMEOUT, "the publisher to start")
    for i, conn in enumerate(subs):
        workers.expect(conn, SETUP_TIMEOUT, f"subscriber {i} to be ready")
    return pub, subs


def run_workers(
    workers: Workers, pub: Connection, subs: list[Connection], spec: WorkerSpec
) -> tuple[PublisherResult, list[SubscriberResult]]:
    """Tell the publisher to go; wait for what it and every subscriber report."""
    pub.send("go")
    wait = SETUP_TIMEOUT + spec.messages / 1000 + (spec.messages / spec.rate if spec.rate else 0)
    published: PublisherResult = workers.expect(pub, wait, "the publisher to finish")
    results: list[SubscriberResult] = [
        workers.expect(conn, wait, f"subscriber {i} to finish") for i, conn in enumerate(subs)
    ]
    return published, results


def per_message_ns(published: PublisherResult) -> int:
    """Divide CPU ns by this for us per published message."""
    return 1000 * max(1, published.published)


@dataclasses.dataclass
class RunResult:
    """One run's figures, as the JSON report lists them (``cross_host.py`` adds more)."""

    system: str
    mode: str
    repeat: int
    published: int
    expected: int
    received: int
    lost: int
    reported_missed: int
    seconds: float
    delivered_per_s: float
    publish_per_s: float
    max_publish_lag_ms: float
    latency_us: dict[str, float]
    per_subscriber: list[int]
    flushed: bool
    #: CPU time per published message, us: the publisher, the processes in
    #: between (per role), all the subscribers together, and "total".
    cpu_us_per_message: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def measured(
        cls,
        system: str,
        spec: WorkerSpec,
        repeat: int,
        published: PublisherResult,
        results: list[SubscriberResult],
        between_cpu_ns: Mapping[str, float],
        **extra: Any,
    ) -> Self:
        """The figures of one run; ``between_cpu_ns``: CPU ns of the hub, bridges or Redis,
        in table order; ``extra``: the fields a subclass adds."""
        received = sum(r.received for r in results)
        expected = published.published * len(results)
        last = max(r.last_ns for r in results)
        seconds = (last - published.first_ns) / 1e9 if received else float("nan")
        samples: list[int] = []
        for r in results:
            samples.extend(array("q", r.latencies))
        per_message = per_message_ns(published)
        cpu = {"publisher": published.cpu_ns / per_message}
        cpu.update({role: ns / per_message for role, ns in between_cpu_ns.items()})
        cpu["subscribers"] = sum(r.cpu_ns for r in results) / per_message
        cpu["total"] = sum(cpu.values())
        return cls(
            system=system,
            mode=spec.mode,
            repeat=repeat,
            published=published.published,
            expected=expected,
            received=received,
            lost=expected - received,
            reported_missed=sum(r.reported_missed for r in results),
            seconds=seconds,
            delivered_per_s=received / seconds if received else 0.0,
            publish_per_s=published.published
            / max(1e-9, (published.last_send_ns - published.first_ns) / 1e9),
            max_publish_lag_ms=published.max_lag_ns / 1e6,
            latency_us=latency_figures(samples) if spec.mode == "latency" else {},
            per_subscriber=[r.received for r in results],
            flushed=published.flushed,
            cpu_us_per_message=cpu,
            **extra,
        )


# -- the report ---------------------------------------------------------------------------


def run_config(args: argparse.Namespace, subscribers: int) -> dict[str, Any]:
    """The report's ``config`` entries both scripts have, in their order."""
    return {
        "subscribers": subscribers,
        "payload_bytes": PAYLOAD_BYTES,
        "messages_per_throughput_run": args.messages,
        "repeats": args.repeats,
        "latency_rate_per_s": args.rate,
        "latency_seconds": args.latency_seconds,
        "latency_warmup_messages_per_subscriber": args.warmup,
    }


def environment(load: tuple[list[float], list[float]], wall: float, **more: Any) -> dict[str, Any]:
    """The report's ``environment``; ``more`` (versions) follows libzmq's."""
    return {
        "python": sys.version.split()[0],
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        **more,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_before": load[0],
        "loadavg_after": load[1],
        "wall_seconds": wall,
    }


def write_json(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
        out.write("\n")


@contextlib.contextmanager
def temp_workdir(prefix: str, keep: bool) -> Iterator[str]:
    """A directory under /tmp (short: AF_UNIX paths <= 107 bytes), removed unless ``keep``."""
    workdir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield workdir
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
