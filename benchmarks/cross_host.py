"""Cross-host relay: circus-events (two bridges and Redis) against raw redis-py.

Both sides run on this machine, in one run, against one private
redis-server that the script starts on a free port (``--save ""
--appendonly no``; the Redis on port 6379 is never touched):

* ``redis-py`` (baseline, the way users use it): one publisher process doing
  pipelined ``PUBLISH`` (``pipeline(transaction=False)``, ``--batch``
  commands per ``execute()``) and four subscriber processes
  (``--subscribers``), each with its own ``PubSub`` connection read with
  ``get_message`` as fast as it goes; hiredis parses. 1 + 4 Redis connections.
  These are the workers ``circus-events bench`` runs
  (:mod:`circus_events.bench.baselines`).
* circus-events: two simulated hosts, each a ``python -m circus_events
  bridge`` process with its own ``--dir`` and ``--host``. One publisher
  worker on host A (:class:`circus_events.Bus`, ``publish``, ``codec="raw"``)
  -> bridge A -> Redis -> bridge B -> four subscriber workers on host B.
  ``ce-raw`` subscribers read ``Bus.subscribe(...)`` with ``get``;
  ``ce-raw-handler`` ones use a ``Bus.on`` handler. The faster of the two is
  the main row. 2 Redis connections per bridge.

``--mode stream`` relays through Redis streams instead: both bridges run
with ``--mode stream``, and the baseline becomes raw redis-py XADD/XREAD
(from :mod:`circus_events.bench.baselines` too):
one publisher doing pipelined ``XADD <key> MAXLEN ~ 100000 * d <payload>``
(the bridge's default retention; same batching as the ``PUBLISH`` path) and
four subscriber processes, each on its own connection looping on ``XREAD
COUNT 1000 BLOCK`` from the start of a fresh per-run stream (so, unlike
``$``, nothing sent before its first read is missed), then from its last
id. Targets: pub/sub, throughput >= 1.0x and p99 <= 2.0x the baseline's;
stream, throughput at least 0.5x the raw XADD/XREAD.

Figures (100-byte payloads; each payload starts with the
``time.monotonic_ns()`` of its send):

* Throughput: the publisher sends ``--messages`` payloads as fast as it
  can. Delivered msg/s = messages received by all subscribers / (time
  of the first publish -> the last subscriber's last receive). Losses are
  counted (subscribers x messages, minus received) and reported, never hidden; Redis
  closing a subscriber for its output buffer shows in ``buffer kills``.
* Latency: the publisher paces itself at ``--rate`` msg/s for
  ``--latency-seconds``; one-way latency = receive time - stamp (one
  machine, one CLOCK_MONOTONIC). The baseline publisher sends a message as
  soon as it is due (a pipeline holds only the messages that are already
  late). The first ``--warmup`` messages of each subscriber are left out.
* CPU time per published message, per role: publisher and subscribers
  measure their own (all threads); bridges and redis-server come from
  ``/proc`` (10 ms ticks), per thread too (in the JSON, and printed for the
  bridges).
* Redis connections: ``CLIENT LIST`` sampled every 100 ms during each run
  (the benchmark's own connection left out), grouped by client name.

Every case runs ``--repeats`` times, interleaved (noise hits every case
alike); the tables show medians. Readiness never relies on a fixed sleep:
circus-events subscribers call ``bus.sync()`` (the bridge applied the
subscription and Redis confirmed it) before they report ready, the
publisher ``sync()`` + ``flush()`` before and ``flush()`` at the end; a
baseline subscriber reports ready once Redis confirmed its ``SUBSCRIBE``.

Reading the figures: at 5,000 msg/s nothing batches, so every message wakes
every process of its path (and, for circus-events, the ZeroMQ I/O threads and
the client's receiver thread); CPU per message is then 7-8x the figure at
full speed. On a machine with few cores that is most of its CPU time, so the
latency percentiles say as much about CPU contention as about the code. The
``circus_events from`` line names the copy measured (the one importable from
the current directory, or ``PYTHONPATH``).

Usage::

    .venv/bin/python benchmarks/cross_host.py            # < 2 min
    .venv/bin/python benchmarks/cross_host.py --quick    # < 40 s
    .venv/bin/python benchmarks/cross_host.py --mode stream --quick
    .venv/bin/python benchmarks/cross_host.py --json out.json
    .venv/bin/python benchmarks/cross_host.py --profile /tmp/prof   # bridges under cProfile
    .venv/bin/python benchmarks/cross_host.py --cases ce-raw-handler --messages 1000 \\
        --latency-seconds 10 --repeats 1 --profile /tmp/prof        # profile at 5,000 msg/s
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import _common
from _common import (
    BusTarget,
    Workers,
    ce_handler_subscriber_main,
    ce_publisher_main,
    ce_subscriber_main,
    environment,
    per_message_ns,
    process_cpu_ns,
    run_config,
    run_workers,
    start_workers,
    temp_workdir,
    thread_cpu_ns,
    wait_for_bridge,
    write_json,
)

from circus_events._config import DEFAULT_RETENTION
from circus_events.bench import baselines
from circus_events.bench.infra import bridge_counters
from circus_events.bench.servers import RedisServer, redis_server_version
from circus_events.bench.spec import CaseSpec

#: Subscriber processes on host B (``--subscribers``).
SUBSCRIBERS: Final = 4
NAMESPACE: Final = "bench"
HOST_A: Final = "host-a"
HOST_B: Final = "host-b"
#: Relay modes (``--mode``): the bridges' ``--mode``, and which raw baseline.
RELAYS: Final = ("pubsub", "stream")
#: Throughput and p99 targets against the baseline, per relay mode (None: no target).
TARGET_THROUGHPUT_RATIO: Final = {"pubsub": 1.0, "stream": 0.5}
TARGET_P99_RATIO: Final[dict[str, float | None]] = {"pubsub": 2.0, "stream": None}
#: How the ratio line states the throughput target, per relay mode.
THROUGHPUT_TARGET_TEXT: Final = {
    "pubsub": "target >= {target}x",
    "stream": "target: throughput at least {target}x the raw XADD/XREAD",
}
#: Stream mode baseline: XADD MAXLEN ~ this (the bridge's default retention).
STREAM_RETENTION: Final = DEFAULT_RETENTION
#: Client names of the baseline's connections (CLIENT SETNAME through redis-py).
BASELINE_CLIENT_PREFIX: Final = "bench-"

SYSTEMS: Final = ("redis-py", "ce-raw", "ce-raw-handler")
BASELINE: Final = "redis-py"
DEFAULT_CASES: Final = ",".join(SYSTEMS)
LABELS: Final = {
    "redis-py": "raw redis-py (hiredis)",
    "ce-raw": "circus-events, subscribe().get",
    "ce-raw-handler": "circus-events, Bus.on",
}
#: Labels in stream mode (``--mode stream``), where they differ.
STREAM_LABELS: Final = {**LABELS, "redis-py": "raw redis-py XADD/XREAD"}


def labels(relay: str) -> dict[str, str]:
    return STREAM_LABELS if relay == "stream" else LABELS


#: CPU roles, in table order.
ROLES: Final = ("publisher", "bridge-a", "bridge-b", "redis", "subscribers")
#: Seconds between CLIENT LIST samples during a run.
CLIENT_SAMPLE_INTERVAL: Final = 0.1
#: ``--profile``: the bridge's CLI under cProfile, timed by the main thread's
#: CPU clock (the asyncio loop's thread; time blocked in epoll is not counted).
PROFILE_BRIDGE: Final = """
import cProfile, sys, time
out = sys.argv.pop(1)
profiler = cProfile.Profile(time.thread_time_ns, 1e-9)
from circus_events.cli import main
try:
    profiler.runcall(main)
except SystemExit:
    pass
finally:
    profiler.dump_stats(out)
"""
#: Functions shown per bridge profile after a ``--profile`` run.
PROFILE_TOP: Final = 25
#: What redis-server logs when it closes a client for its output buffer.
BUFFER_KILL_LOG: Final = "overcoming of output buffer limits"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One measurement, as every process of it sees it."""

    system: str  # one of SYSTEMS
    mode: str  # "throughput" or "latency"
    messages: int
    rate: float  # msg/s for latency runs; 0: as fast as possible
    channel: str  # unique per run, so runs cannot see each other's messages
    warmup: int
    workdir: str
    redis_port: int
    batch: int  # baseline: PUBLISH (or XADD) commands per pipeline execute()
    subscribers: int = SUBSCRIBERS
    codec: str = "raw"
    relay: str = "pubsub"  # one of RELAYS: the bridges' --mode and the baseline

    def case_spec(self) -> CaseSpec:
        """The same measurement for :mod:`circus_events.bench.baselines`: the baseline
        (``redis-py``) is ``redis-pubsub`` or ``redis-stream`` there, by ``relay``."""
        baseline = "redis-stream" if self.relay == "stream" else "redis-pubsub"
        return CaseSpec(
            system=baseline if self.system == BASELINE else self.system,
            mode=self.mode,
            messages=self.messages,
            rate=self.rate,
            channel=self.channel,
            warmup=self.warmup,
            workers=self.subscribers,
            pub_bus=self.pub_bus,
            sub_bus=self.sub_bus,
            redis_port=self.redis_port,
            batch=self.batch,
            codec=self.codec,
        )

    @property
    def pub_bus(self) -> BusTarget:
        return BusTarget(os.path.join(self.workdir, "a"), NAMESPACE, HOST_A)

    @property
    def sub_bus(self) -> BusTarget:
        return BusTarget(os.path.join(self.workdir, "b"), NAMESPACE, HOST_B)


# -- orchestration ----------------------------------------------------------------------


class ClientSampler:
    """``CLIENT LIST`` every CLIENT_SAMPLE_INTERVAL on a thread: the largest
    number of connections seen per group (bridge host, baseline, other)."""

    def __init__(self, port: int) -> None:
        import redis  # noqa: PLC0415

        self._client = redis.Redis(host="127.0.0.1", port=port, client_name="bench-monitor")
        self._own_id = int(self._client.client_id())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-sampler", daemon=True)
        self.samples = 0
        self.max_by_group: dict[str, int] = {}
        self.max_total = 0

    def _sample(self) -> None:
        groups: dict[str, int] = {}
        total = 0
        for client in self._client.client_list():
            if int(client["id"]) == self._own_id:
                continue
            total += 1
            name = str(client.get("name", ""))
            if name.startswith("circus-events:"):
                group = "bridge " + name.split(":")[1]
            elif name.startswith(BASELINE_CLIENT_PREFIX):
                group = "redis-py"
            else:
                group = "other"
            groups[group] = groups.get(group, 0) + 1
        self.samples += 1
        self.max_total = max(self.max_total, total)
        for group, count in groups.items():
            self.max_by_group[group] = max(self.max_by_group.get(group, 0), count)

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(CLIENT_SAMPLE_INTERVAL):
                return

    def __enter__(self) -> ClientSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()  # at least one sample after everything ran
        self._client.close()


@dataclasses.dataclass
class RunResult(_common.RunResult):
    """The figures of :class:`_common.RunResult`, and Redis' and the bridges'."""

    #: Per thread of the bridges and redis-server, us per published message.
    thread_cpu_us_per_message: dict[str, dict[str, float]]
    #: Largest CLIENT LIST count seen during the run, per group, and in all.
    redis_clients: dict[str, int]
    redis_clients_total: int
    redis_buffer_kills: int
    #: Change of the bridges' counters during the run (circus-events runs).
    bridge_counters: dict[str, dict[str, int]]


def run_once(
    context: Any, spec: Spec, repeat: int, infra: dict[str, Any], redis: RedisServer
) -> RunResult:
    baseline = spec.system == BASELINE
    if baseline:  # raw PUBLISH/SUBSCRIBE or, in stream mode, XADD/XREAD
        publisher_main: Callable[..., None] = functools.partial(
            baselines.redis_publisher_main, maxlen=STREAM_RETENTION
        )
        subscriber_main: Callable[..., None] = baselines.redis_subscriber_main
    elif spec.system == "ce-raw-handler":
        publisher_main, subscriber_main = ce_publisher_main, ce_handler_subscriber_main
    else:
        publisher_main, subscriber_main = ce_publisher_main, ce_subscriber_main
    pids: dict[str, int] = {"bridge-a": infra["bridge-a"], "bridge-b": infra["bridge-b"]}
    pids["redis"] = redis.pid
    dirs = {"bridge-a": spec.pub_bus.dir, "bridge-b": spec.sub_bus.dir}
    workers = Workers(context)
    try:
        case = spec.case_spec()
        pub, subs = start_workers(workers, publisher_main, subscriber_main, case, spec.subscribers)
        kills = redis.buffer_kills()
        counters = {role: bridge_counters(d, NAMESPACE) for role, d in dirs.items()}
        cpu_before = {role: process_cpu_ns(pid) for role, pid in pids.items()}
        threads_before = {role: thread_cpu_ns(pid) for role, pid in pids.items()}
        with ClientSampler(spec.redis_port) as sampler:
            published, results = run_workers(workers, pub, subs, case)
            cpu_after = {role: process_cpu_ns(pid) for role, pid in pids.items()}
            threads_after = {role: thread_cpu_ns(pid) for role, pid in pids.items()}
        kills = redis.buffer_kills() - kills
        for role, d in dirs.items():
            after = bridge_counters(d, NAMESPACE)
            counters[role] = {
                k: v - counters[role].get(k, 0)
                for k, v in after.items()
                if v != counters[role].get(k, 0)
            }
    finally:
        workers.close()
    per_message = per_message_ns(published)
    # The bridges idle through a baseline run: not part of that system.
    between = {
        role: 0 if baseline and role != "redis" else cpu_after[role] - cpu_before[role]
        for role in pids
    }
    threads = {
        role: {
            name: (ns - threads_before[role].get(name, 0)) / per_message
            for name, ns in threads_after[role].items()
        }
        for role in pids
    }
    return RunResult.measured(
        spec.system,
        spec,
        repeat,
        published,
        results,
        between,
        thread_cpu_us_per_message=threads,
        redis_clients=dict(sorted(sampler.max_by_group.items())),
        redis_clients_total=sampler.max_total,
        redis_buffer_kills=kills,
        bridge_counters=counters if not baseline else {},
    )


@contextlib.contextmanager
def infrastructure(
    workdir: str, profile_dir: str | None, relay: str
) -> Iterator[tuple[RedisServer, dict[str, Any]]]:
    """redis-server and the two bridges (hosts A and B, ``--mode relay``), for the whole run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    redis_dir = os.path.join(workdir, "redis")
    os.makedirs(redis_dir)
    redis = RedisServer(redis_dir)
    bridges: dict[str, subprocess.Popen[bytes]] = {}
    try:
        redis.start()
        for role, host, sub in (("bridge-a", HOST_A, "a"), ("bridge-b", HOST_B, "b")):
            bus_dir = os.path.join(workdir, sub)
            os.makedirs(bus_dir)
            python: list[str] = [sys.executable]
            if profile_dir is not None:
                python += ["-c", PROFILE_BRIDGE, os.path.join(profile_dir, f"{role}.prof")]
            else:
                python += ["-m", "circus_events"]
            with open(os.path.join(workdir, f"{role}.log"), "ab") as log:
                bridges[role] = subprocess.Popen(
                    [
                        *python,
                        *("bridge", "--dir", bus_dir),
                        *("--host", host, "--namespace", NAMESPACE, "--redis-url", redis.url),
                        *("--mode", relay),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        for role, sub in (("bridge-a", "a"), ("bridge-b", "b")):
            wait_for_bridge(
                bridges[role],
                os.path.join(workdir, sub),
                os.path.join(workdir, f"{role}.log"),
                NAMESPACE,
                ready=lambda status: bool((status.get("redis") or {}).get("connected")),
            )
        yield redis, {role: proc.pid for role, proc in bridges.items()}
    finally:
        for proc in bridges.values():
            proc.send_signal(signal.SIGTERM)
        for proc in bridges.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        redis.stop()


# -- report -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[RunResult], key: Callable[[RunResult], dict[str, float]]) -> Any:
    """Median, per key, of a dict figure over runs."""
    if not runs:
        return {}
    keys = list(key(runs[0]))
    return {k: median([key(r).get(k, float("nan")) for r in runs]) for k in keys}


def thread_summary(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {}
    for role in ("bridge-a", "bridge-b", "redis"):
        names = sorted({n for r in runs for n in r.thread_cpu_us_per_message.get(role, {})})
        values = {
            name: median([r.thread_cpu_us_per_message.get(role, {}).get(name, 0.0) for r in runs])
            for name in names
        }
        result[role] = {name: v for name, v in values.items() if v > 0}
    return result


def build_report(
    args: argparse.Namespace,
    throughput: list[RunResult],
    latency: list[RunResult],
    load: tuple[list[float], list[float]],
    wall: float,
) -> dict[str, Any]:
    import redis  # noqa: PLC0415

    import circus_events  # noqa: PLC0415

    systems = [s for s in SYSTEMS if any(r.system == s for r in throughput + latency)]
    summary: dict[str, Any] = {}
    for system in systems:
        runs = [r for r in throughput if r.system == system]
        lats = [r for r in latency if r.system == system]
        everything = runs + lats
        summary[system] = {
            "label": labels(args.mode)[system],
            "throughput_median_per_s": median([r.delivered_per_s for r in runs]),
            "throughput_runs_per_s": [r.delivered_per_s for r in runs],
            "lost_per_run": [r.lost for r in runs],
            "reported_missed_per_run": [r.reported_missed for r in runs],
            "buffer_kills_per_run": [r.redis_buffer_kills for r in runs],
            "cpu_us_per_message_median": summarize(runs, lambda r: r.cpu_us_per_message),
            "thread_cpu_us_per_message_median": thread_summary(runs),
            "latency_us": summarize(lats, lambda r: r.latency_us),
            "latency_p99_runs_us": [r.latency_us.get("p99", float("nan")) for r in lats],
            "latency_lost_per_run": [r.lost for r in lats],
            "latency_publish_per_s": median([r.publish_per_s for r in lats]),
            "latency_max_publish_lag_ms": max((r.max_publish_lag_ms for r in lats), default=0.0),
            "latency_cpu_us_per_message_median": summarize(lats, lambda r: r.cpu_us_per_message),
            "redis_clients_max": {
                group: max(r.redis_clients.get(group, 0) for r in everything)
                for group in sorted({g for r in everything for g in r.redis_clients})
            },
            "redis_clients_min_of_max_total": min(
                (r.redis_clients_total for r in everything), default=0
            ),
        }
    ce_systems = [s for s in systems if s != BASELINE]
    main_system = max(ce_systems, key=lambda s: summary[s]["throughput_median_per_s"], default=None)
    base = summary.get(BASELINE, {})
    ratios: dict[str, Any] = {}
    for system in ce_systems:
        if not base:
            break
        mine = summary[system]
        p99 = mine["latency_us"].get("p99", float("nan"))
        base_p99 = base["latency_us"].get("p99", float("nan"))
        throughput_ratio = mine["throughput_median_per_s"] / base["throughput_median_per_s"]
        throughput_target = TARGET_THROUGHPUT_RATIO[args.mode]
        p99_target = TARGET_P99_RATIO[args.mode]
        cpu_ratio = (
            mine["cpu_us_per_message_median"].get("total", float("nan"))
            / base["cpu_us_per_message_median"].get("total", float("nan"))
            if mine["cpu_us_per_message_median"] and base["cpu_us_per_message_median"]
            else float("nan")
        )
        ratios[system] = {
            "main": system == main_system,
            "throughput_ratio": throughput_ratio,
            "throughput_target": throughput_target,
            "throughput_ok": throughput_ratio >= throughput_target,
            "p99_us": p99,
            "baseline_p99_us": base_p99,
            "p99_ratio": p99 / base_p99,
            "p99_target_ratio": p99_target,
            "p99_ok": None if p99_target is None else p99 / base_p99 <= p99_target,
            "p50_ratio": mine["latency_us"].get("p50", float("nan"))
            / base["latency_us"].get("p50", float("nan")),
            "cpu_per_message_ratio": cpu_ratio,
        }
    return {
        "config": {
            "mode": args.mode,
            **run_config(args, args.subscribers),
            "baseline_pipeline_batch": args.batch,
            "quick": args.quick,
            "profile": args.profile,
        },
        "environment": environment(
            load,
            wall,
            redis_py=redis.__version__,
            redis_server=args.redis_version,
            circus_events=os.path.dirname(circus_events.__file__),
        ),
        "main_case": main_system,
        "summary": summary,
        "ratios": ratios,
        "throughput_runs": [r.summary() for r in throughput],
        "latency_runs": [r.summary() for r in latency],
    }


def print_report(report: dict[str, Any]) -> None:
    config, env = report["config"], report["environment"]
    summary = report["summary"]
    stream = config["mode"] == "stream"
    print()
    print(
        f"cross-host{', stream mode' if stream else ''}: 1 publisher on A -> bridge A -> "
        f"Redis -> bridge B -> {config['subscribers']} subscribers on B (baseline: "
        f"redis-py{' XADD/XREAD' if stream else ''}, 1 + "
        f"{config['subscribers']} connections), {config['payload_bytes']}-byte payloads"
    )
    print(
        f"{env['cpus']} CPUs, python {env['python']}, pyzmq {env['pyzmq']} / libzmq "
        f"{env['libzmq']}, redis-py {env['redis_py']}, redis-server {env['redis_server']}"
    )
    print(f"circus_events from {env['circus_events']}")
    print(
        f"load average before {env['loadavg_before']}, after {env['loadavg_after']}; "
        f"wall {env['wall_seconds']:.1f} s"
        + ("; BRIDGES UNDER cProfile (slower)" if config["profile"] else "")
    )
    print()
    print(
        f"throughput: {config['messages_per_throughput_run']:,} messages published per run, "
        f"delivered msg/s (all subscribers), median of {config['repeats']}"
    )
    print(
        f"  {'case':<32} {'median':>9}  {'runs':<26} {'lost':<10} {'gaps':<10} {'buffer kills':<12}"
    )
    for s in summary.values():
        runs = " ".join(f"{v:,.0f}" for v in s["throughput_runs_per_s"])
        lost = ",".join(str(v) for v in s["lost_per_run"])
        gaps = ",".join(str(v) for v in s["reported_missed_per_run"])
        kills = ",".join(str(v) for v in s["buffer_kills_per_run"])
        print(
            f"  {s['label']:<32} {s['throughput_median_per_s']:>9,.0f}  {runs:<26} "
            f"{lost:<10} {gaps:<10} {kills:<12}"
        )
    print("  (gaps: losses the circus-events subscribers detected and reported themselves)")
    print()
    print(
        "CPU time per published message in the throughput runs, us (median; "
        "subscribers = all of them together)"
    )
    print(f"  {'case':<32} " + " ".join(f"{r:>11}" for r in (*ROLES, "total")))
    for s in summary.values():
        cpu = s["cpu_us_per_message_median"]
        if cpu:
            print(f"  {s['label']:<32} " + " ".join(f"{cpu[r]:>11.1f}" for r in (*ROLES, "total")))
    print("  (bridges and redis-server from /proc ticks, +-10 ms per run)")
    for system, s in summary.items():
        for role, per_thread in s["thread_cpu_us_per_message_median"].items():
            if per_thread and role != "redis" and system != BASELINE:
                shown = ", ".join(f"{n} {v:.1f}" for n, v in per_thread.items())
                print(f"  {s['label']:<32} {role} threads: {shown}")
    print()
    print(
        f"latency at {config['latency_rate_per_s']:,.0f} msg/s for "
        f"{config['latency_seconds']} s, one-way, us, median of {config['repeats']} "
        f"(first {config['latency_warmup_messages_per_subscriber']} per subscriber left out)"
    )
    print(
        f"  {'case':<32} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>8} "
        f"{'samples':>8} {'lost':>6} {'sent/s':>7} {'CPU/msg':>8}  p99 runs"
    )
    for s in summary.values():
        lat = s["latency_us"]
        if not lat:
            continue
        p99_runs = " ".join(f"{v:.0f}" for v in s["latency_p99_runs_us"])
        print(
            f"  {s['label']:<32} {lat['p50']:>7.0f} {lat['p90']:>7.0f} {lat['p99']:>7.0f} "
            f"{lat['p999']:>7.0f} {lat['max']:>8.0f} {lat['samples']:>8.0f} "
            f"{sum(s['latency_lost_per_run']):>6} {s['latency_publish_per_s']:>7.0f} "
            f"{s['latency_cpu_us_per_message_median'].get('total', float('nan')):>8.1f}"
            f"  {p99_runs}"
        )
    print("  (CPU/msg: CPU time of every process of the case per published message, us)")
    print()
    print("Redis connections during the runs (CLIENT LIST, largest count seen, by client name)")
    for system, s in summary.items():
        groups = s["redis_clients_max"]
        shown = ", ".join(f"{g}: {n}" for g, n in groups.items())
        if system == BASELINE:
            mine = groups.get("redis-py", 0)
            verdict = "ok" if mine == 1 + config["subscribers"] else "UNEXPECTED"
            check = f"redis-py {mine}, expected 1 + {config['subscribers']}: {verdict}"
        else:
            per_bridge = [n for g, n in groups.items() if g.startswith("bridge ")]
            others = sum(n for g, n in groups.items() if not g.startswith("bridge "))
            verdict = "ok" if per_bridge == [2, 2] and not others else "UNEXPECTED"
            check = f"expected 2 per bridge and no other: {verdict}"
        print(f"  {s['label']:<32} {shown}  ({check})")
    print("  (the idle bridges stay connected through the baseline runs)")
    print()
    print("circus-events / redis-py baseline")
    target_text = THROUGHPUT_TARGET_TEXT[config["mode"]]
    for system, r in report["ratios"].items():
        tag = "main " if r["main"] else "extra"
        target = target_text.format(target=r["throughput_target"])
        p99_target = (
            f"target <= {r['p99_target_ratio']}x: {'ok' if r['p99_ok'] else 'MISSED'}"
            if r["p99_target_ratio"] is not None
            else f"no {config['mode']} target"
        )
        print(
            f"  {tag} {summary[system]['label']:<32} throughput {r['throughput_ratio']:.2f}x "
            f"({target}: {'ok' if r['throughput_ok'] else 'MISSED'}); "
            f"p99 {r['p99_us']:.0f} us = {r['p99_ratio']:.2f}x baseline ({p99_target}); "
            f"p50 {r['p50_ratio']:.2f}x; CPU/msg {r['cpu_per_message_ratio']:.2f}x"
        )
    print()


def print_profiles(directory: str) -> None:
    """The top of each bridge's profile (main-thread CPU time, whole run)."""
    import io  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    for role in ("bridge-a", "bridge-b"):
        path = os.path.join(directory, f"{role}.prof")
        if not os.path.exists(path):
            print(f"{role}: no profile written ({path})")
            continue
        out = io.StringIO()
        stats = pstats.Stats(path, stream=out)
        stats.strip_dirs().sort_stats("tottime").print_stats(PROFILE_TOP)
        print(f"{role} main thread, CPU time by function (cProfile, {path}):")
        lines = out.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        for line in lines[start:]:
            if line.strip():
                print(f"  {line}")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 40 s)")
    parser.add_argument(
        "--mode",
        choices=RELAYS,
        default="pubsub",
        help="the bridges' --mode; stream: the baseline is raw redis-py XADD/XREAD [pubsub]",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    parser.add_argument(
        "--messages", type=int, help="published per throughput run [100000; --quick 25000]"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per case [3]")
    parser.add_argument("--rate", type=float, default=5000.0, help="latency runs: msg/s [5000]")
    parser.add_argument(
        "--latency-seconds", type=float, help="latency run length, s [3; --quick 1]"
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="latency: first messages left out [100]"
    )
    parser.add_argument(
        "--subscribers",
        type=int,
        default=SUBSCRIBERS,
        help=f"subscriber processes on host B [{SUBSCRIBERS}]",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1000,
        help="baseline: PUBLISH (stream mode: XADD) per pipeline execute() [1000]",
    )
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help=f"comma-separated, from {', '.join(SYSTEMS)} [{DEFAULT_CASES}]",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run the bridges under cProfile (main-thread CPU time), writing bridge-a.prof "
        "and bridge-b.prof here, and print their top functions",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.messages is None:
        args.messages = 25_000 if args.quick else 100_000
    if args.latency_seconds is None:
        args.latency_seconds = 1.0 if args.quick else 3.0
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.subscribers < 1:
        parser.error("--subscribers must be at least 1")
    systems = [s.strip() for s in args.cases.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.redis_version = redis_server_version()
    if args.profile:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)

    # forkserver: workers fork from a process that already imported zmq, redis
    # and circus_events (the server itself holds no socket), so a run starts fast.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["zmq", "redis", "circus_events", "circus_events.client"])
    started = time.monotonic()
    load_before = list(os.getloadavg())
    throughput: list[RunResult] = []
    latency: list[RunResult] = []
    serial = 0
    with (
        temp_workdir("cex-", args.keep) as workdir,
        infrastructure(workdir, args.profile, args.mode) as (redis, infra),
    ):

        def spec(system: str, mode: str, messages: int, rate: float) -> Spec:
            nonlocal serial
            serial += 1
            return Spec(
                system,
                mode,
                messages,
                rate,
                f"bench.run{serial}",
                args.warmup,
                workdir,
                redis.port,
                args.batch,
                args.subscribers,
                relay=args.mode,
            )

        count = int(args.rate * args.latency_seconds)
        for repeat in range(args.repeats):
            for system in systems:  # interleaved: noise hits every case alike
                result = run_once(
                    context, spec(system, "throughput", args.messages, 0), repeat, infra, redis
                )
                throughput.append(result)
                print(
                    f"throughput {repeat + 1}/{args.repeats} {system:<14} "
                    f"{result.delivered_per_s:>9,.0f} msg/s delivered "
                    f"in {result.seconds:.2f} s, lost {result.lost}, "
                    f"CPU {result.cpu_us_per_message['total']:.1f} us/msg",
                    file=sys.stderr,
                    flush=True,
                )
            for system in systems:
                result = run_once(
                    context, spec(system, "latency", count, args.rate), repeat, infra, redis
                )
                latency.append(result)
                lat = result.latency_us
                print(
                    f"latency {repeat + 1}/{args.repeats} {system:<14} "
                    f"p50 {lat.get('p50', 0):.0f} us, p99 {lat.get('p99', 0):.0f} us, "
                    f"lost {result.lost}",
                    file=sys.stderr,
                    flush=True,
                )
    report = build_report(
        args, throughput, latency, (load_before, list(os.getloadavg())), time.monotonic() - started
    )
    print_report(report)
    if args.profile:
        print_profiles(args.profile)
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
