"""Local fan-out: circus-events through its bridge against a raw pyzmq proxy.

Both sides run the same topology on this machine, in one run:

* ``zmq-proxy`` (baseline): one process runs ``zmq.proxy(XSUB, XPUB)`` bound
  on ``ipc://``; one publisher process (``PUB`` connect) and four ``SUB``
  processes. High-water marks are set to the ones circus-events uses on the
  same path (publisher 100k, proxy in 100k, proxy out 50k per subscriber,
  subscriber 50k), so both sides may buffer the same amount, and
  ``ZMQ_XPUB_NODROP`` is set on the ``PUB`` and on the proxy's ``XPUB``: a
  publisher faster than its subscribers is slowed down instead of
  overflowing the high-water marks (without it, a pyzmq publisher at ~1M
  msg/s loses most of 200k messages here and "delivered msg/s" means
  little). circus-events needs no such setting for a fair figure: its
  ``PUSH`` to the bridge blocks the publisher, and the bridge sets the pace.
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
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, Final

import zmq
from _common import (
    IDLE_SECONDS,
    PAYLOAD_BYTES,
    SETUP_TIMEOUT,
    STAMP,
    BusTarget,
    PublisherResult,
    SubscriberResult,
    Workers,
    ce_handler_subscriber_main,
    ce_publisher_main,
    ce_subscriber_main,
    latency_figures,
    pace,
    process_cpu_ns,
    wait_for_bridge,
)

SUBSCRIBERS: Final = 4
NAMESPACE: Final = "bench"
HOST: Final = "benchhost"
TARGET_THROUGHPUT_RATIO: Final = 0.7
TARGET_P99_MS: Final = 1.0

# The same buffering as circus-events on the same path (see the module docstring).
PUB_HWM: Final = 100_000  # Bus send_queue default
PROXY_IN_HWM: Final = 100_000  # bridge PULL_HWM
PROXY_OUT_HWM: Final = 50_000  # bridge subscriber_hwm default
SUB_HWM: Final = 50_000  # client RECEIVE_HWM

#: Baseline frame kinds (first payload byte).
KIND_DATA: Final = 0x44  # "D"
KIND_PROBE: Final = 0x50  # "P"


SYSTEMS: Final = ("zmq-proxy", "ce-raw", "ce-json", "ce-raw-handler")
DEFAULT_CASES: Final = "zmq-proxy,ce-raw,ce-json"
LABELS: Final = {
    "zmq-proxy": "raw pyzmq XSUB/XPUB proxy",
    "ce-raw": "circus-events codec=raw",
    "ce-json": "circus-events codec=json",
    "ce-raw-handler": "circus-events raw, Bus.on",
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One measurement, as every process of it sees it."""

    system: str  # one of SYSTEMS
    mode: str  # "throughput" or "latency"
    messages: int
    rate: float  # msg/s for latency runs; 0: as fast as possible
    channel: str  # unique per run, so runs cannot see each other's messages
    workdir: str
    warmup: int

    @property
    def codec(self) -> str:
        return "json" if self.system == "ce-json" else "raw"

    @property
    def proxy_in(self) -> str:
        return f"ipc://{self.workdir}/proxy-in.sock"

    @property
    def proxy_out(self) -> str:
        return f"ipc://{self.workdir}/proxy-out.sock"

    @property
    def bus_dir(self) -> str:
        return os.path.join(self.workdir, "ce")

    @property
    def pub_bus(self) -> BusTarget:
        return BusTarget(self.bus_dir, NAMESPACE, HOST)

    @property
    def sub_bus(self) -> BusTarget:
        return BusTarget(self.bus_dir, NAMESPACE, HOST)


# -- worker processes -----------------------------------------------------------------


def zmq_proxy_main(spec: Spec, conn: Connection) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front = context.socket(zmq.XSUB)
    front.setsockopt(zmq.RCVHWM, PROXY_IN_HWM)
    front.bind(spec.proxy_in)
    back = context.socket(zmq.XPUB)
    back.setsockopt(zmq.SNDHWM, PROXY_OUT_HWM)
    back.setsockopt(zmq.XPUB_NODROP, 1)  # a full subscriber slows the proxy down
    back.bind(spec.proxy_out)
    conn.send("ready")
    with contextlib.suppress(zmq.ContextTerminated, KeyboardInterrupt):
        zmq.proxy(front, back)


def zmq_publisher_main(spec: Spec, conn: Connection) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, PUB_HWM)
    pub.setsockopt(zmq.XPUB_NODROP, 1)  # a full pipe blocks send() instead of dropping
    pub.setsockopt(zmq.LINGER, 5000)
    pub.connect(spec.proxy_in)
    topic = spec.channel.encode() + b"\0"
    probe = topic + bytes((KIND_PROBE,))
    conn.send("ready")
    # Probe until the parent says go: each subscriber reports ready once a
    # probe reached it, i.e. once its subscription reached proxy and publisher.
    while not conn.poll(0.002):
        pub.send(probe)
    conn.recv()
    cpu = time.process_time_ns()
    head = topic + bytes((KIND_DATA,))
    pad = b"x" * (PAYLOAD_BYTES - 1 - STAMP.size)
    pack = STAMP.pack
    send = pub.send
    now = time.monotonic_ns
    interval = int(1e9 / spec.rate) if spec.rate else 0
    max_lag = 0
    first = now()
    for i in range(spec.messages):
        if interval:
            max_lag = max(max_lag, pace(first, i, interval))
        send(b"".join((head, pack(now()), pad)))
    last = now()
    pub.close()  # lingers until the proxy has taken everything
    context.term()
    cpu = time.process_time_ns() - cpu
    conn.send(PublisherResult(first, last, spec.messages, max_lag, True, cpu))


def zmq_subscriber_main(spec: Spec, conn: Connection, index: int) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, SUB_HWM)
    topic = spec.channel.encode() + b"\0"
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(spec.proxy_out)
    kind_at = len(topic)
    stamp_at = kind_at + 1
    if not sub.poll(int(SETUP_TIMEOUT * 1000)):
        raise RuntimeError(f"subscriber {index}: no probe arrived")
    conn.send("ready")
    cpu = time.process_time_ns()
    recv = sub.recv
    now = time.monotonic_ns
    unpack = STAMP.unpack_from
    latency = spec.mode == "latency"
    samples = array("q")
    idle_ms = int(IDLE_SECONDS * 1000)
    count = first = last = 0
    while count < spec.messages:
        try:
            frame = recv(zmq.NOBLOCK)
        except zmq.Again:
            if not sub.poll(idle_ms):
                break
            continue
        if frame[kind_at] != KIND_DATA:
            continue
        last = now()
        if not count:
            first = last
        if latency and count >= spec.warmup:
            samples.append(last - unpack(frame, stamp_at)[0])
        count += 1
    cpu = time.process_time_ns() - cpu
    sub.close(linger=0)
    context.term()
    conn.send(SubscriberResult(count, first, last, samples.tobytes(), 0, cpu))


# -- orchestration ----------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
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
    #: CPU time per published message, us: publisher, hub (bridge or proxy),
    #: the four subscribers together, and all of them.
    cpu_us_per_message: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_once(context: Any, spec: Spec, repeat: int, hub_pid: int) -> RunResult:
    if spec.system == "zmq-proxy":
        publisher_main: Callable[..., None] = zmq_publisher_main
        subscriber_main: Callable[..., None] = zmq_subscriber_main
    elif spec.system == "ce-raw-handler":
        publisher_main, subscriber_main = ce_publisher_main, ce_handler_subscriber_main
    else:
        publisher_main, subscriber_main = ce_publisher_main, ce_subscriber_main
    workers = Workers(context)
    try:
        subs = [workers.start(subscriber_main, spec, i) for i in range(SUBSCRIBERS)]
        pub = workers.start(publisher_main, spec)
        workers.expect(pub, SETUP_TIMEOUT, "the publisher to start")
        for i, conn in enumerate(subs):
            workers.expect(conn, SETUP_TIMEOUT, f"subscriber {i} to be ready")
        hub_cpu = process_cpu_ns(hub_pid)
        pub.send("go")
        wait = (
            SETUP_TIMEOUT + spec.messages / 1000 + (spec.messages / spec.rate if spec.rate else 0)
        )
        published: PublisherResult = workers.expect(pub, wait, "the publisher to finish")
        results: list[SubscriberResult] = [
            workers.expect(conn, wait, f"subscriber {i} to finish") for i, conn in enumerate(subs)
        ]
        hub_cpu = process_cpu_ns(hub_pid) - hub_cpu
    finally:
        workers.close()
    received = sum(r.received for r in results)
    expected = published.published * SUBSCRIBERS
    last = max(r.last_ns for r in results)
    seconds = (last - published.first_ns) / 1e9 if received else float("nan")
    samples: list[int] = []
    for r in results:
        samples.extend(array("q", r.latencies))
    per_message = 1000 * max(1, published.published)  # ns -> us per published message
    cpu = {
        "publisher": published.cpu_ns / per_message,
        "hub": hub_cpu / per_message,
        "subscribers": sum(r.cpu_ns for r in results) / per_message,
    }
    cpu["total"] = sum(cpu.values())
    return RunResult(
        system=spec.system,
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
    )


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
    proxy_spec = Spec("zmq-proxy", "proxy", 0, 0, "", workdir, 0)
    proxy = context.Process(target=zmq_proxy_main, args=(proxy_spec, child), daemon=True)
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
            "subscribers": SUBSCRIBERS,
            "payload_bytes": PAYLOAD_BYTES,
            "messages_per_throughput_run": args.messages,
            "repeats": args.repeats,
            "latency_rate_per_s": args.rate,
            "latency_seconds": args.latency_seconds,
            "latency_warmup_messages_per_subscriber": args.warmup,
            "hwm": {
                "publisher": PUB_HWM,
                "proxy_in": PROXY_IN_HWM,
                "proxy_out": PROXY_OUT_HWM,
                "subscriber": SUB_HWM,
            },
            "quick": args.quick,
        },
        "environment": {
            "python": sys.version.split()[0],
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load[0],
            "loadavg_after": load[1],
            "wall_seconds": wall,
        },
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
    workdir = tempfile.mkdtemp(prefix="ceb-", dir="/tmp")
    started = time.monotonic()
    load_before = list(os.getloadavg())
    throughput: list[RunResult] = []
    latency: list[RunResult] = []
    serial = 0

    def spec(system: str, mode: str, messages: int, rate: float) -> Spec:
        nonlocal serial
        serial += 1
        return Spec(system, mode, messages, rate, f"bench.run{serial}", workdir, args.warmup)

    try:
        with infrastructure(context, workdir) as hubs:
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
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = build_report(
        args, throughput, latency, (load_before, list(os.getloadavg())), time.monotonic() - started
    )
    print_report(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
            out.write("\n")


if __name__ == "__main__":
    main()
