"""``circus-events bench``: circus-events against raw Redis/ZeroMQ and peer libraries.

Theory of operation
-------------------
One run starts a private redis-server (free port, never 6379), a raw pyzmq
``XSUB``/``XPUB`` proxy, and five bridges as simulated hosts: one without
Redis (local fan-out), two in pub/sub mode and two in stream mode (host A
publishes, host B's workers subscribe). Every system is measured with the
same 100-byte payloads, one publisher and 1, 8 and 32 subscribing workers:

* throughput: the publisher sends as fast as it goes; delivered msg/s =
  messages received by all subscribers / (first publish -> last receive);
* latency: the publisher paces itself at a fixed rate; one-way latency =
  receive time - the ``monotonic_ns`` stamped in the payload;
* CPU seconds per 10,000 messages delivered: every process of the system
  (publisher, subscribers, bridges or proxy, redis-server);
* Redis connections of the subscribing host (``CLIENT LIST`` every 100 ms);
* the bridges' peak resident memory (``VmRSS`` every 100 ms).

Then two fault scenarios draw delivered msg/s per 100 ms: a subscriber
stopped with SIGSTOP (a stuck worker), and Redis stopped for 3 s and
restarted empty on the same port. Cases run interleaved so that noise hits
every system alike; every ratio is taken within the same run.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any, Final

from . import baselines, infra, peers
from .cases import BIN_SECONDS, BRIDGES, SYSTEMS, Options, RunResult, System
from .report import build_report, print_report, write_charts
from .spec import CaseSpec
from .stack import Stack, running_stack
from .workers import (
    SETUP_TIMEOUT,
    PublisherResult,
    SubscriberResult,
    Workers,
    ce_handler_subscriber_main,
    ce_publisher_main,
    ce_subscriber_main,
    ce_timeline_subscriber_main,
    latency_figures,
    process_cpu_ns,
)

#: Seconds of publishing after the stuck subscriber is continued.
STUCK_AFTER: Final = 2.0
#: Seconds a timeline run keeps listening after the publisher is done.
TIMELINE_SETTLE: Final = 6.0


# -- one measurement ------------------------------------------------------------------------


def expect(conn: Any, timeout: float, what: str) -> Any:
    try:
        if not conn.poll(timeout):
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"{what}: the process died (see its traceback above)") from None


def run_case(
    stack: Stack,
    system: System,
    spec: CaseSpec,
    during: Callable[[list[int]], None] | None = None,
) -> RunResult:
    """One measurement; ``during(subscriber pids)`` runs on a thread after "go"."""
    workers = Workers(stack.context)
    peer_procs: list[peers.PeerProcess] = []
    subscriber_pids: list[int] = []
    timeline = spec.mode == "timeline"
    hubs = stack.hub_pids(system)
    rss_pids = {k: v for k, v in hubs.items() if k.startswith("bridge-")}
    redis_port = (
        None if system.name == "zmq-proxy" or system.bridges[0] == "local" else stack.redis.port
    )

    def start_sub(index: int) -> Any:
        if system.kind == "peer":
            proc = peers.PeerProcess(stack.peer_python, peer_spec(spec, stack), "sub")
            peer_procs.append(proc)
            subscriber_pids.append(proc.pid)
            return proc
        if system.name == "zmq-proxy":
            main: Callable[..., None] = baselines.zmq_subscriber_main
        elif system.kind == "baseline":
            main = baselines.redis_subscriber_main
        else:
            main = (
                ce_timeline_subscriber_main
                if timeline
                else ce_handler_subscriber_main
                if system.handler
                else ce_subscriber_main
            )
        conn = workers.start(main, spec, index)
        subscriber_pids.append(workers.processes[-1].pid)
        return conn

    try:
        with infra.Sampler(redis_port, rss_pids) as sampler:
            if system.kind == "peer":
                pub: Any = peers.PeerProcess(stack.peer_python, peer_spec(spec, stack), "pub")
                peer_procs.append(pub)
            elif system.name == "zmq-proxy":
                pub = workers.start(baselines.zmq_publisher_main, spec)
            elif system.kind == "baseline":
                pub = workers.start(baselines.redis_publisher_main, spec)
            else:
                pub = workers.start(ce_publisher_main, spec)
            expect(pub, SETUP_TIMEOUT, "the publisher to start")
            if system.kind == "peer":
                time.sleep(0.3)  # its connections open as it starts probing
            before = sampler.connections()
            subs = [start_sub(i) for i in range(spec.workers)]
            for i, conn in enumerate(subs):
                expect(conn, SETUP_TIMEOUT, f"subscriber {i} to be ready")
            cpu_before = {role: process_cpu_ns(pid) for role, pid in hubs.items()}
            pub.send("go")
            thread = None
            if during is not None:
                thread = threading.Thread(target=during, args=(subscriber_pids,), daemon=True)
                thread.start()
            wait = (
                SETUP_TIMEOUT
                + spec.messages / 500
                + (spec.messages / spec.rate if spec.rate else 0)
            )
            published: PublisherResult = expect(pub, wait, "the publisher to finish")
            if thread is not None:
                thread.join()
            if timeline:
                # What is still on its way arrives: after an outage, pub/sub holds
                # the backlog until the other bridges have resubscribed
                # (RESUME_GRACE, after a reconnect backoff of up to BACKOFF_MAX).
                time.sleep(TIMELINE_SETTLE)
                for conn in subs:
                    conn.send("stop")
            results: list[SubscriberResult] = [
                expect(conn, wait, f"subscriber {i} to finish") for i, conn in enumerate(subs)
            ]
            # A restarted redis-server (outage runs) is a new process: its CPU is unknown.
            after_pids = stack.hub_pids(system)
            cpu_after = {
                role: process_cpu_ns(pid) if after_pids.get(role) == pid else -1
                for role, pid in hubs.items()
            }
    finally:
        for proc in peer_procs:
            proc.close()
        workers.close()
    received = sum(r.received for r in results)
    expected = published.published * spec.workers
    last = max(r.last_ns for r in results)
    seconds = (last - published.first_ns) / 1e9 if received else float("nan")
    cpu = {
        role: (cpu_after[role] - cpu_before[role]) / 1e9 if cpu_after[role] >= 0 else float("nan")
        for role in hubs
    }
    cpu["publisher"] = published.cpu_ns / 1e9
    cpu["subscribers"] = sum(r.cpu_ns for r in results) / 1e9
    if redis_port is None:
        sub_host: int | None = None
    elif system.kind == "circus-events":
        sub_group = "bridge " + stack.target(system.bridges[1]).host
        sub_host = sampler.max_by_group.get(sub_group, 0)
    else:
        group = "baseline" if system.kind == "baseline" else "other"
        sub_host = sampler.max_by_group.get(group, 0) - before.get(group, 0)
    result = RunResult(
        system=system.name,
        mode=spec.mode,
        workers=spec.workers,
        published=published.published,
        expected=expected,
        received=received,
        lost=expected - received,
        reported_missed=sum(r.reported_missed for r in results),
        seconds=seconds,
        delivered_per_s=received / seconds if received and seconds > 0 else 0.0,
        latency_us={},
        cpu_s_per_10k=sum(cpu.values()) / received * 10_000 if received else float("nan"),
        cpu_s=cpu,
        redis_connections_sub_host=sub_host,
        redis_connections=dict(sorted(sampler.max_by_group.items())),
        bridge_peak_rss_bytes=max(sampler.max_rss.values()) if sampler.max_rss else None,
    )
    if spec.mode == "latency":
        samples: list[int] = []
        for r in results:
            samples.extend(array("q", r.latencies))
        result.latency_us = latency_figures(samples)
    elif timeline:
        result.timeline = {
            f"subscriber {i}": binned(array("q", r.latencies), published.first_ns)
            for i, r in enumerate(results)
        }
    return result


def peer_spec(spec: CaseSpec, stack: Stack) -> dict[str, Any]:
    return {
        "lib": "broadcaster" if spec.system == "broadcaster" else "channels",
        "url": stack.redis.url,
        "channel": spec.channel,
        "messages": spec.messages,
        "rate": spec.rate,
        "mode": spec.mode,
        "warmup": spec.warmup,
    }


def binned(times: array[int], start_ns: int) -> list[float]:
    """Receive times -> delivered msg/s per BIN_SECONDS bin from ``start_ns``."""
    counts: list[float] = []
    width = int(BIN_SECONDS * 1e9)
    for t in times:
        index = max(0, (t - start_ns) // width)
        while len(counts) <= index:
            counts.append(0.0)
        counts[index] += 1 / BIN_SECONDS
    return counts


# -- the whole run ------------------------------------------------------------------------


class Progress:
    """One line per finished step on stderr: ``[ 7/40  31s] what``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        self.done += 1
        self.note(text, f"{self.done:>3}/{self.total}")

    def note(self, text: str, count: str = "") -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{count:>7} {elapsed:5.0f}s] {text}", file=sys.stderr, flush=True)


def describe(result: RunResult) -> str:
    head = f"{result.mode:<10} {result.system:<15} x{result.workers:<3}"
    if result.mode == "latency":
        lat = result.latency_us
        return (
            f"{head} p50 {lat.get('p50', float('nan')):,.0f} us, "
            f"p99 {lat.get('p99', float('nan')):,.0f} us, lost {result.lost}"
        )
    return (
        f"{head} {result.delivered_per_s:>10,.0f} msg/s delivered, lost {result.lost}, "
        f"CPU {result.cpu_s_per_10k:.2f} s/10k"
    )


def run(options: Options) -> dict[str, Any]:
    """Measure everything ``options`` asks for; the report (JSON-ready dict)."""
    started = time.monotonic()
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["zmq", "redis", "circus_events", "circus_events.client"])
    workdir = tempfile.mkdtemp(prefix="ceb-", dir="/tmp")  # short: AF_UNIX paths <= 107 bytes
    progress = Progress(0)
    peer_versions: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    peer_python = ""
    selected = options.selected()
    measure_peers = any(s.kind == "peer" for s in selected)
    if options.peers and measure_peers:
        try:
            peer_python, peer_versions = peers.ensure_env(progress.note)
            progress.note(
                "peers' environment: "
                + ", ".join(f"{k} {v}" for k, v in peer_versions.items())
                + f" ({peer_python})"
            )
        except peers.PeersUnavailable as exc:
            for name in ("broadcaster", "channels-redis"):
                unavailable[name] = f"peers' environment unavailable: {exc}"
            progress.note(f"peers unavailable: {exc}")
    elif measure_peers:
        for name in ("broadcaster", "channels-redis"):
            unavailable[name] = "not measured (--no-peers)"
    runs: list[RunResult] = []
    faults: dict[str, Any] = {}
    serial = 0
    try:
        bridges = tuple(b for b in BRIDGES if any(b in s.bridges for s in selected))
        proxy = any(s.name == "zmq-proxy" for s in selected)
        with running_stack(workdir, context, bridges, proxy=proxy) as stack:
            stack.peer_python = peer_python
            for bridge, reason in stack.unavailable.items():
                for system in selected:
                    if bridge in system.bridges:
                        unavailable[system.name] = reason
            systems = [s for s in selected if s.name not in unavailable]
            for name, reason in unavailable.items():
                progress.note(f"{name}: unavailable ({reason})")
            progress.total = len(options.workers) * len(systems) * (options.repeats + 1)

            def spec(
                system: System, mode: str, workers: int, messages: int, rate: float
            ) -> CaseSpec:
                nonlocal serial
                serial += 1
                return CaseSpec(
                    system=system.name,
                    mode=mode,
                    messages=messages,
                    rate=rate,
                    channel=f"bench.run{serial}",
                    warmup=options.warmup,
                    workers=workers,
                    pub_bus=stack.target(system.bridges[0]),
                    sub_bus=stack.target(system.bridges[1]),
                    redis_port=stack.redis.port,
                    proxy_in=stack.proxy_endpoints[0],
                    proxy_out=stack.proxy_endpoints[1],
                    codec=system.codec,
                )

            count = max(1, int(options.rate * options.latency_seconds))
            for workers in options.workers:
                for _repeat in range(options.repeats):
                    for system in systems:  # interleaved: noise hits every system alike
                        messages = (
                            options.peer_messages if system.kind == "peer" else options.messages
                        )
                        result = run_case(
                            stack, system, spec(system, "throughput", workers, messages, 0)
                        )
                        runs.append(result)
                        progress.step(describe(result))
                for system in systems:
                    result = run_case(
                        stack,
                        system,
                        spec(system, "latency", workers, count + options.warmup, options.rate),
                    )
                    runs.append(result)
                    progress.step(describe(result))
        if options.faults:
            faults = run_faults(options, workdir, context, unavailable, progress)
    finally:
        if options.keep:
            progress.note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return build_report(
        options, runs, faults, unavailable, peer_versions, time.monotonic() - started
    )


def run_faults(
    options: Options, workdir: str, context: Any, unavailable: dict[str, str], progress: Progress
) -> dict[str, Any]:
    """Stuck subscriber and Redis outage timelines, on a stack of their own."""
    faults: dict[str, Any] = {}
    fault_dir = os.path.join(workdir, "f")
    os.makedirs(fault_dir)
    subscribers = 4
    serial = 0
    with running_stack(fault_dir, context, ("a", "b", "sa", "sb"), proxy=False) as stack:

        def spec(system: System, rate: float, seconds: float) -> CaseSpec:
            nonlocal serial
            serial += 1
            return CaseSpec(
                system=system.name,
                mode="timeline",
                messages=int(rate * seconds),
                rate=rate,
                channel=f"bench.fault{serial}",
                warmup=0,
                workers=subscribers,
                pub_bus=stack.target(system.bridges[0]),
                sub_bus=stack.target(system.bridges[1]),
                redis_port=stack.redis.port,
            )

        stuck_from = 1.0
        stuck_until = options.stuck_seconds

        def stick(pids: list[int]) -> None:
            time.sleep(stuck_from)
            os.kill(pids[0], signal.SIGSTOP)
            time.sleep(stuck_until - stuck_from)
            os.kill(pids[0], signal.SIGCONT)

        stuck: dict[str, Any] = {
            "description": f"{subscribers} subscribers at {options.stuck_rate:,.0f} msg/s; "
            "subscriber 0 is stopped (SIGSTOP) during the window, then continued",
            "window_s": [stuck_from, stuck_until],
            "bin_s": BIN_SECONDS,
            "systems": {},
        }
        for name in ("ce-pubsub", "redis-pubsub"):
            if name in unavailable or "a" in stack.unavailable:
                continue
            result = run_case(
                stack,
                SYSTEMS[name],
                # Publishing goes on after the window: a stuck worker learns of
                # what it lost from the next message, not before.
                spec(SYSTEMS[name], options.stuck_rate, options.stuck_seconds + STUCK_AFTER),
                stick,
            )
            stuck["systems"][name] = dataclasses.asdict(result)
            progress.note(f"fault: stuck subscriber, {name}: lost {result.lost}")
        faults["stuck_subscriber"] = stuck

        outage_from = options.outage_at
        outage_until = options.outage_at + options.outage_seconds

        def outage(_pids: list[int]) -> None:
            time.sleep(outage_from)
            stack.redis.stop()
            time.sleep(options.outage_seconds)
            stack.redis.start()

        restart: dict[str, Any] = {
            "description": f"{subscribers} subscribers at {options.outage_rate:,.0f} msg/s; "
            f"redis-server stopped for {options.outage_seconds:g} s, restarted empty "
            "on the same port",
            "window_s": [outage_from, outage_until],
            "bin_s": BIN_SECONDS,
            "systems": {},
        }
        for name, bridge in (("ce-pubsub", "a"), ("ce-stream", "sa")):
            if name in unavailable or bridge in stack.unavailable:
                restart["systems"][name] = {"unavailable": unavailable.get(name, "bridge failed")}
                continue
            result = run_case(
                stack,
                SYSTEMS[name],
                spec(SYSTEMS[name], options.outage_rate, options.fault_seconds),
                outage,
            )
            restart["systems"][name] = dataclasses.asdict(result)
            progress.note(f"fault: Redis outage, {name}: lost {result.lost} of {result.expected}")
            time.sleep(1.0)  # the bridges settle before the next outage
        faults["redis_outage"] = restart
    return faults


def bench(options: Options, out_dir: str, charts: bool = True) -> dict[str, Any]:
    """Run, then write ``bench.json`` (and the charts) to ``out_dir`` and print the table."""
    report = run(options)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "bench.json")
    paths: list[str] = []
    note = "charts skipped (--no-charts)"
    if charts:
        paths, note = write_charts(report, out_dir)
    report["charts"] = paths
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with open(json_path, "w") as out:
        json.dump(report, out, indent=1, allow_nan=True)
        out.write("\n")
    print_report(report, json_path, paths, note)
    return report
