"""Local fan-out: circus-events through its bridge against a raw pyzmq proxy.

Both sides run the same topology on this machine, in one run:

* ``zmq-proxy`` (baseline): one process runs ``zmq.proxy(XSUB, XPUB)`` bound
  on ``ipc://``; one publisher process (``PUB`` connect) and four ``SUB``
  processes. High-water marks are set to the ones circus-events uses on the
  same path (20k frames each: publisher, proxy in, proxy out per subscriber,
  subscriber), so both sides may buffer the same number of frames, and
  ``ZMQ_XPUB_NODROP`` is set on the ``PUB`` and on the proxy's ``XPUB``: a
  publisher faster than its subscribers is slowed down instead of
  overflowing the high-water marks (without it, a pyzmq publisher at ~1M
  msg/s loses most of 200k messages here and "delivered msg/s" means
  little). circus-events needs no such setting for a fair figure: its
  ``PUSH`` to the bridge blocks the publisher, and the bridge sets the pace.
  A circus-events publisher in a burst sends batch frames (up to 256
  messages, 16 KiB); the baseline sends one frame per message, as raw pyzmq
  code does.
  These are the proxy and workers ``circus-events bench`` runs
  (:mod:`circus_events.bench.baselines`, :func:`~circus_events.bench.infra.zmq_proxy_main`).
* ``circus-events``: one bridge process (``python -m circus_events bridge``,
  single host), one publisher process (:class:`circus_events.Bus`,
  ``publish``) and four subscriber processes (``Bus.subscribe`` iterated with
  ``get``, reading ``event.data``). ``codec="raw"`` with 100-byte ``bytes``
  payloads is the main row; ``codec="json"`` with a dict that encodes to
  ~100 bytes is a second row. ``--cases ...,ce-raw-handler`` adds a row whose
  subscribers use a ``Bus.on`` handler instead of the iterator.

Figures:

* Throughput: the publisher sends ``--messages`` 100-byte payloads as fast
  as it can. Delivered msg/s = messages received by all four subscribers /
  (time of the first publish -> the last subscriber's last receive). Losses
  are counted (expected 4 x messages, minus received) and reported, never
  hidden. Each case is repeated ``--repeats`` times, interleaved, and the
  median is reported.
* Latency: the publisher paces itself at ``--rate`` msg/s for
  ``--latency-seconds`` and stamps each payload with ``time.monotonic_ns()``
  just before it sends (CLOCK_MONOTONIC is system-wide on Linux, so the
  subscribers' one-way figures need no clock sync). The stamp is the actual
  send time, so a publisher that falls behind its schedule is not charged;
  its worst schedule lag is in the JSON (``max_publish_lag_ms``). The first
  ``--warmup`` messages of each subscriber are left out of the percentiles.
* CPU time per published message, per role (publisher, hub = bridge or
  proxy, the four subscribers): each worker measures its own CPU time (all
  threads) over the measurement; the hub's comes from ``/proc``. On a
  shared, noisy machine this is steadier than msg/s, and it shows where
  the time goes.

Readiness never relies on a fixed sleep: circus-events subscribers call
``bus.sync()`` and the publisher ``bus.flush()`` before the start signal (and
``bus.flush()`` again at the end); baseline subscribers report ready only
after a probe message sent by the publisher reached them, which proves their
subscription reached the proxy and the publisher.

Usage::

    .venv/bin/python benchmarks/local_fanout.py            # ~70 s
    .venv/bin/python benchmarks/local_fanout.py --quick    # ~25 s
    .venv/bin/python benchmarks/local_fanout.py --json out.json
    .venv/bin/python benchmarks/local_fanout.py --cases zmq-proxy,ce-raw,ce-raw-handler
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from _common import (
    SETUP_TIMEOUT,
    BusTarget,
    RunResult,
    Workers,
    ce_handler_subscriber_main,
    ce_publisher_main,
    ce_subscriber_main,
    environment,
    process_cpu_ns,
    run_config,
    run_workers,
    start_workers,
    temp_workdir,
    wait_for_bridge,
    write_json,
)

from circus_events.bench import baselines
from circus_events.bench.baselines import PUB_HWM, SUB_HWM
from circus_events.bench.infra import PROXY_IN_HWM, PROXY_OUT_HWM, zmq_proxy_main
from circus_events.bench.spec import CaseSpec

SUBSCRIBERS: Final = 4
NAMESPACE: Final = "bench"
HOST: Final = "benchhost"
TARGET_THROUGHPUT_RATIO: Final = 0.7
TARGET_P99_MS: Final = 1.0


SYSTEMS: Final = ("zmq-proxy", "ce-raw", "ce-json", "ce-raw-handler")
DEFAULT_CASES: Final = "zmq-proxy,ce-raw,ce-json"
LABELS: Final = {
    "zmq-proxy": "raw pyzmq XSUB/XPUB proxy",
    "ce-raw": "circus-events codec=raw",
    "ce-json": "circus-events codec=json",
    "ce-raw-handler": "circus-events raw, Bus.on",
}


def proxy_endpoints(workdir: str) -> tuple[str, str]:
    """Where the zmq proxy binds: the publisher's side, the subscribers' side."""
    return f"ipc://{workdir}/proxy-in.sock", f"ipc://{workdir}/proxy-out.sock"


def case_spec(
    system: str, mode: str, messages: int, rate: float, channel: str, workdir: str, warmup: int
) -> CaseSpec:
    """One measurement, as every process of it sees it (``channel`` unique per run)."""
    bus = BusTarget(os.path.join(workdir, "ce"), NAMESPACE, HOST)
    proxy_in, proxy_out = proxy_endpoints(workdir)
    return CaseSpec(
        system=system,  # one of SYSTEMS
        mode=mode,  # "throughput" or "latency"
        messages=messages,
        rate=rate,  # msg/s for latency runs; 0: as fast as possible
        channel=channel,
        warmup=warmup,
        workers=SUBSCRIBERS,
        pub_bus=bus,
        sub_bus=bus,
        proxy_in=proxy_in,
        proxy_out=proxy_out,
        codec="json" if system == "ce-json" else "raw",
    )


# -- orchestration ----------------------------------------------------------------------


def run_once(context: Any, spec: CaseSpec, repeat: int, hub_pid: int) -> RunResult:
    if spec.system == "zmq-proxy":
        publisher_main: Callable[..., None] = baselines.zmq_publisher_main
        subscriber_main: Callable[..., None] = baselines.zmq_subscriber_main
    elif spec.system == "ce-raw-handler":
        publisher_main, subscriber_main = ce_publisher_main, ce_handler_subscriber_main
    else:
        publisher_main, subscriber_main = ce_publisher_main, ce_subscriber_main
    workers = Workers(context)
    try:
        pub, subs = start_workers(workers, publisher_main, subscriber_main, spec, SUBSCRIBERS)
        hub_cpu = process_cpu_ns(hub_pid)
        published, results = run_workers(workers, pub, subs, spec)
        hub_cpu = process_cpu_ns(hub_pid) - hub_cpu
    finally:
        workers.close()
    return RunResult.measured(spec.system, spec, repeat, published, results, {"hub": hub_cpu})


@contextlib.contextmanager
def infrastructure(context: Any, workdir: str) -> Iterator[dict[str, int]]:
    """The zmq proxy process and the circus-events bridge process, for the whole run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    bus_dir = os.path.join(workdir, "ce")
    os.makedirs(bus_dir)
    log_path = os.path.join(workdir, "bridge.log")
    with open(log_path, "ab") as log:
        bridge = subprocess.Popen(
            [
                *(sys.executable, "-m", "circus_events", "bridge"),
                *("--dir", bus_dir, "--host", HOST, "--namespace", NAMESPACE),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    parent, child = context.Pipe()
    endpoints = proxy_endpoints(workdir)
    proxy = context.Process(target=zmq_proxy_main, args=(endpoints, child), daemon=True)
    proxy.start()
    child.close()
    try:
        wait_for_bridge(bridge, bus_dir, log_path, NAMESPACE)
        if not parent.poll(SETUP_TIMEOUT):
            raise RuntimeError("the zmq proxy did not start")
        parent.recv()
        yield {"zmq": proxy.pid, "ce": bridge.pid}
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(15)
        except subprocess.TimeoutExpired:
            bridge.kill()
            bridge.wait(5)
        proxy.terminate()
        proxy.join(5)
        parent.close()


# -- report -------------------------------------------------------------------------------


def median_of(runs: list[RunResult], system: str) -> float:
    values = [r.delivered_per_s for r in runs if r.system == system]
    return statistics.median(values) if values else float("nan")


def build_report(
    args: argparse.Namespace,
    throughput: list[RunResult],
    latency: list[RunResult],
    load: tuple[list[float], list[float]],
    wall: float,
) -> dict[str, Any]:
    systems = [s for s in SYSTEMS if any(r.system == s for r in throughput + latency)]
    summary: dict[str, Any] = {}
    for system in systems:
        runs = [r for r in throughput if r.system == system]
        lat = next((r for r in latency if r.system == system), None)
        summary[system] = {
            "label": LABELS[system],
            "throughput_median_per_s": median_of(throughput, system),
            "throughput_runs_per_s": [r.delivered_per_s for r in runs],
            "lost_per_run": [r.lost for r in runs],
            "cpu_us_per_message_median": {
                part: statistics.median(r.cpu_us_per_message[part] for r in runs)
                for part in ("publisher", "hub", "subscribers", "total")
            }
            if runs
            else {},
            "latency_us": lat.latency_us if lat else {},
            "latency_lost": lat.lost if lat else None,
            "latency_publish_per_s": lat.publish_per_s if lat else None,
            "latency_cpu_us_per_message": lat.cpu_us_per_message if lat else {},
        }
    base = summary.get("zmq-proxy", {})
    ratios: dict[str, Any] = {}
    for system in systems:
        if system == "zmq-proxy" or not base:
            continue
        mine = summary[system]
        p99 = mine["latency_us"].get("p99", float("nan"))
        base_p99 = base["latency_us"].get("p99", float("nan"))
        ratio = mine["throughput_median_per_s"] / base["throughput_median_per_s"]
        ratios[system] = {
            "throughput_ratio": ratio,
            "throughput_target": TARGET_THROUGHPUT_RATIO,
            "throughput_ok": ratio >= TARGET_THROUGHPUT_RATIO,
            "p99_ratio": p99 / base_p99,
            "p99_ms": p99 / 1000,
            "p99_target_ms": TARGET_P99_MS,
            "p99_ok": p99 / 1000 <= TARGET_P99_MS,
        }
    return {
        "config": {
            **run_config(args, SUBSCRIBERS),
            "hwm": {
                "publisher": PUB_HWM,
                "proxy_in": PROXY_IN_HWM,
                "proxy_out": PROXY_OUT_HWM,
                "subscriber": SUB_HWM,
            },
            "quick": args.quick,
        },
        "environment": environment(load, wall),
        "summary": summary,
        "ratios": ratios,
        "throughput_runs": [r.summary() for r in throughput],
        "latency_runs": [r.summary() for r in latency],
    }


def print_report(report: dict[str, Any]) -> None:
    config, env = report["config"], report["environment"]
    print()
    print(
        f"local fan-out: 1 publisher -> {config['subscribers']} subscribers, "
        f"{config['payload_bytes']}-byte payloads, {env['cpus']} CPUs, "
        f"python {env['python']}, pyzmq {env['pyzmq']} / libzmq {env['libzmq']}"
    )
    print(
        f"load average before {env['loadavg_before']}, after {env['loadavg_after']}; "
        f"wall {env['wall_seconds']:.1f} s"
    )
    print()
    print(
        f"throughput: {config['messages_per_throughput_run']:,} messages published per run, "
        f"delivered msg/s (all subscribers), median of {config['repeats']}"
    )
    print(f"  {'case':<28} {'median':>11}  {'runs':<36} {'lost':<12}")
    for s in report["summary"].values():
        runs = " ".join(f"{v:,.0f}" for v in s["throughput_runs_per_s"])
        lost = ",".join(str(v) for v in s["lost_per_run"])
        print(f"  {s['label']:<28} {s['throughput_median_per_s']:>11,.0f}  {runs:<36} {lost:<12}")
    print()
    print(
        "CPU time per published message in the throughput runs, us (median; "
        "subscribers = all four together)"
    )
    print(f"  {'case':<28} {'publisher':>10} {'hub':>8} {'subscribers':>12} {'total':>8}")
    for s in report["summary"].values():
        cpu = s["cpu_us_per_message_median"]
        if cpu:
            print(
                f"  {s['label']:<28} {cpu['publisher']:>10.1f} {cpu['hub']:>8.1f} "
                f"{cpu['subscribers']:>12.1f} {cpu['total']:>8.1f}"
            )
    print("  (hub = the bridge or the proxy process; /proc ticks, +-10 ms per run)")
    print()
    print(
        f"latency at {config['latency_rate_per_s']:,.0f} msg/s for "
        f"{config['latency_seconds']} s, one-way, us "
        f"(first {config['latency_warmup_messages_per_subscriber']} per subscriber left out)"
    )
    print(
        f"  {'case':<28} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>9} "
        f"{'samples':>8} {'lost':>5} {'sent/s':>8} {'CPU/msg':>8}"
    )
    for s in report["summary"].values():
        lat = s["latency_us"]
        if not lat:
            continue
        print(
            f"  {s['label']:<28} {lat['p50']:>8.0f} {lat['p90']:>8.0f} {lat['p99']:>8.0f} "
            f"{lat['p999']:>8.0f} {lat['max']:>9.0f} {lat['samples']:>8.0f} "
            f"{s['latency_lost']:>5} {s['latency_publish_per_s']:>8.0f} "
            f"{s['latency_cpu_us_per_message']['total']:>8.0f}"
        )
    print("  (CPU/msg: CPU time of all processes per published message, us)")
    print()
    print("circus-events / baseline")
    for system, r in report["ratios"].items():
        print(
            f"  {LABELS[system]:<28} throughput {r['throughput_ratio']:.2f}x "
            f"(target >= {r['throughput_target']}x: {'ok' if r['throughput_ok'] else 'MISSED'}); "
            f"p99 {r['p99_ms']:.3f} ms = {r['p99_ratio']:.1f}x baseline "
            f"(target <= {r['p99_target_ms']} ms: {'ok' if r['p99_ok'] else 'MISSED'})"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (~25 s)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    parser.add_argument(
        "--messages", type=int, help="published per throughput run [200000; --quick 50000]"
    )
    parser.add_argument("--repeats", type=int, help="throughput runs per case [3]")
    parser.add_argument("--rate", type=float, default=5000.0, help="latency runs: msg/s [5000]")
    parser.add_argument(
        "--latency-seconds", type=float, help="latency run length, s [4; --quick 1.5]"
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="latency: first messages left out [100]"
    )
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help=f"comma-separated, from {', '.join(SYSTEMS)} [{DEFAULT_CASES}]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (bridge.log)")
    args = parser.parse_args()
    if args.messages is None:
        args.messages = 50_000 if args.quick else 200_000
    if args.repeats is None:
        args.repeats = 3
    if args.latency_seconds is None:
        args.latency_seconds = 1.5 if args.quick else 4.0
    systems = [s.strip() for s in args.cases.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")

    # forkserver: workers fork from a process that already imported zmq and
    # circus_events (the server itself holds no socket), so a run starts fast.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["zmq", "circus_events", "circus_events.client"])
    started = time.monotonic()
    load_before = list(os.getloadavg())
    throughput: list[RunResult] = []
    latency: list[RunResult] = []
    serial = 0
    with temp_workdir("ceb-", args.keep) as workdir, infrastructure(context, workdir) as hubs:

        def spec(system: str, mode: str, messages: int, rate: float) -> CaseSpec:
            nonlocal serial
            serial += 1
            channel = f"bench.run{serial}"
            return case_spec(system, mode, messages, rate, channel, workdir, args.warmup)

        for repeat in range(args.repeats):
            for system in systems:  # interleaved: noise hits every case alike
                hub = hubs["zmq" if system == "zmq-proxy" else "ce"]
                result = run_once(
                    context, spec(system, "throughput", args.messages, 0), repeat, hub
                )
                throughput.append(result)
                print(
                    f"throughput {repeat + 1}/{args.repeats} {system:<10} "
                    f"{result.delivered_per_s:>11,.0f} msg/s delivered "
                    f"in {result.seconds:.2f} s, lost {result.lost}",
                    file=sys.stderr,
                    flush=True,
                )
        count = int(args.rate * args.latency_seconds)
        for system in systems:
            hub = hubs["zmq" if system == "zmq-proxy" else "ce"]
            result = run_once(context, spec(system, "latency", count, args.rate), 0, hub)
            latency.append(result)
            lat = result.latency_us
            print(
                f"latency {system:<10} p50 {lat.get('p50', 0):.0f} us, "
                f"p99 {lat.get('p99', 0):.0f} us, lost {result.lost}",
                file=sys.stderr,
                flush=True,
            )
    report = build_report(
        args, throughput, latency, (load_before, list(os.getloadavg())), time.monotonic() - started
    )
    print_report(report)
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
