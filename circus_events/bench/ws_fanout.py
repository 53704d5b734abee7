"""Websocket fan-out: events published on host A, delivered to N sockets on host B.

Host B runs ``workers`` uvicorn processes, each on its own port (the same
options for every system); client processes (:mod:`.ws_roles`) open
``sockets`` sockets spread over them; a publisher process on host A sends
``rate`` events/s for ``duration`` seconds. Everything runs on this machine:
a private redis-server on a free port (never 6379) and, for circus-events,
one bridge per simulated host. The peers (python-socketio with
``AsyncRedisManager``, broadcaster with Starlette, channels with
channels_redis) run in the peers' venv (:mod:`.peers`), each in its
documented set-up, with the same clients.

Measured per system and socket count: deliveries/s; latency p50/p99
(publish to client receive, one clock, a 1-in-10 sample); host B's CPU
seconds per 10k deliveries (utime+stime of the server processes over the
publishing window); memory per idle socket (RSS growth of the servers when
the sockets connect and subscribe, divided by their number); Redis
connections of host B (the servers, or its bridge) and of host A (the
publisher, or its bridge), from CLIENT LIST.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final

from .servers import RedisServer, free_port
from .ws_floor import send_floor_us

#: The systems, circus-events first; the others are peers.
SYSTEMS: Final = ("ce", "socketio", "broadcaster", "channels", "ce-queued")
PEERS: Final = ("socketio", "broadcaster", "channels")
#: Measured by default: circus-events and the peers (ce-queued on request).
DEFAULT_SYSTEMS: Final = SYSTEMS[:4]
ROLES: Final = str(Path(__file__).with_name("ws_roles.py"))
CLIENT_PROCESSES: Final = 2
TICKS: Final = os.sysconf("SC_CLK_TCK")
#: Seconds for every socket's subscription to go live (probes until then).
PROBE_TIMEOUT: Final = 120.0
#: Seconds the last deliveries have after the last publish.
DRAIN_TIMEOUT: Final = 30.0
#: Targets (issue 15): deliveries per CPU second against the best peer, idle memory.
TARGET_CPU_RATIO: Final = 5.0
TARGET_IDLE_BYTES: Final = 50 * 1024
#: Sockets for the send() floor: past a thousand the cost per call is the same.
FLOOR_SOCKETS: Final = 1000


@dataclasses.dataclass(frozen=True)
class WsOptions:
    sockets: tuple[int, ...] = (1000, 5000)
    workers: int = 4
    #: Events/s published: ``deliveries`` (per second, all sockets together)
    #: divided by the socket count, unless ``rate`` is given. The same
    #: deliveries/s at every count: what two client processes keep up with.
    deliveries: float = 20_000.0
    rate: float | None = None
    duration: float = 10.0
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    direct_writes: bool = True

    @classmethod
    def preset(cls, quick: bool = False, smoke: bool = False, peers: bool = True) -> WsOptions:
        systems = DEFAULT_SYSTEMS if peers else ("ce",)
        if smoke:
            return cls(sockets=(40,), workers=1, rate=20.0, duration=2.0, systems=("ce",))
        if quick:
            return cls(sockets=(200, 1000), workers=4, duration=5.0, systems=systems)
        return cls(systems=systems)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_listening(port: int, timeout: float, process: subprocess.Popen[Any]) -> None:
    """Wait until a server accepts TCP connections on ``port``."""
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if process.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited ({process.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no server on port {port} after {timeout:g}s")
        time.sleep(0.05)  # polling the port


def line(process: subprocess.Popen[bytes], timeout: float = 300.0) -> str:
    """One line from a child, or an error naming what it wrote on stderr."""
    assert process.stdout is not None
    text = process.stdout.readline().decode().strip()
    if not text:
        raise RuntimeError(f"a bench process exited early ({process.poll()})")
    return text


def ask(process: subprocess.Popen[bytes], command: str) -> str:
    assert process.stdin is not None
    process.stdin.write(command.encode() + b"\n")
    process.stdin.flush()
    return line(process)


class Run:
    """One system at one socket count: its processes, cleaned up on exit."""

    def __init__(self, system: str, sockets: int, options: WsOptions, peer_python: str) -> None:
        self.system, self.sockets, self.options = system, sockets, options
        self.python = peer_python if system in PEERS else sys.executable
        self.home = Path(tempfile.mkdtemp(prefix="ce-wsb-", dir="/tmp"))
        self.started: list[subprocess.Popen[bytes]] = []
        self.redis = RedisServer(self.home)

    def spawn(self, *args: str, pipes: bool = False, python: str | None = None) -> Any:
        process = subprocess.Popen(
            [python or self.python, *args],
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stderr=None if os.environ.get("WSB_VERBOSE") else subprocess.DEVNULL,
            env={**os.environ, "CIRCUS_EVENTS_REDIS_URL": self.redis.url},
        )
        self.started.append(process)
        return process

    def role(self, role: str, *args: str, python: str | None = None) -> Any:
        argv = [ROLES, role, "--system", self.system, "--redis-url", self.redis.url, *args]
        return self.spawn(*argv, pipes=role != "server", python=python)

    def bridge(self, host: str) -> Path:
        directory = self.home / host
        directory.mkdir()
        if self.system not in PEERS:
            self.spawn("-m", "circus_events", "bridge", "--dir", str(directory), "--host", host)
        return directory

    def redis_clients(self) -> int:
        """Redis connections, less the one asking."""
        return len(self.redis.client().client_list()) - 1

    def measure(self) -> dict[str, Any]:
        options, sockets = self.options, self.sockets
        self.redis.start()
        host_b = self.bridge("host-b")
        ports = [free_port() for _ in range(options.workers)]
        no_direct = [] if options.direct_writes else ["--no-direct"]
        servers = [
            self.role("server", "--dir", str(host_b), "--worker", f"host-b/hub-{n}",
                      "--port", str(port), *no_direct)
            for n, port in enumerate(ports)
        ]  # fmt: skip
        for port, server in zip(ports, servers, strict=True):
            wait_listening(port, 120, server)
        idle_rss = sum(rss_bytes(s.pid) for s in servers)
        urls = ",".join(f"ws://127.0.0.1:{p}/events" for p in ports)
        per_process = -(-sockets // CLIENT_PROCESSES)
        counts = [min(per_process, sockets - n * per_process) for n in range(CLIENT_PROCESSES)]
        client_procs = [
            self.role("clients", "--urls", urls, "--count", str(c), python=sys.executable)
            for c in counts
            if c > 0
        ]
        for process in client_procs:
            if line(process) != "CONNECTED":
                raise RuntimeError("the clients did not connect")
        # Host B's connections: everything so far (host A has none yet; the
        # peers' publisher connects on its first publish).
        host_b_redis = self.redis_clients()
        host_a = self.bridge("host-a")
        publisher = self.role("publisher", "--dir", str(host_a))
        if line(publisher) != "READY":
            raise RuntimeError("the publisher did not start")
        deadline = time.monotonic() + PROBE_TIMEOUT
        while sum(json.loads(ask(p, "PROBED"))["probed"] for p in client_procs) < sockets:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.system}: the sockets' subscriptions never went live")
            ask(publisher, "PROBE")
            time.sleep(0.2)  # probing rate
        connected_rss = sum(rss_bytes(s.pid) for s in servers)
        redis_total = self.redis_clients()
        cpu_before = sum(cpu_seconds(s.pid) for s in servers)
        start = time.monotonic()
        rate = options.rate or options.deliveries / sockets
        count = max(1, int(rate * options.duration))
        if ask(publisher, f"RUN {rate} {count}") != "DONE":
            raise RuntimeError("the publisher failed")
        expected = count * sockets
        drain_deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            reports = [json.loads(ask(p, "REPORT")) for p in client_procs]
            received = sum(r["received"] for r in reports)
            if received >= expected or time.monotonic() > drain_deadline:
                break
            time.sleep(0.2)  # waiting for the last deliveries
        elapsed = time.monotonic() - start
        cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
        latencies = sorted(x for r in reports for x in r["latencies"])
        for process in [*client_procs, publisher]:
            with contextlib.suppress(OSError, RuntimeError):
                ask(process, "EXIT")
        return {
            "system": self.system,
            "sockets": sockets,
            "workers": options.workers,
            "rate": round(rate, 2),
            "duration": options.duration,
            "expected": expected,
            "received": received,
            "deliveries_per_s": round(received / elapsed),
            "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
            if latencies
            else None,
            "cpu_s_per_10k": round(cpu / received * 10_000, 4) if received else None,
            "deliveries_per_cpu_s": round(received / cpu) if cpu > 0 else None,
            "bytes_per_idle_socket": round((connected_rss - idle_rss) / max(sockets, 1)),
            "redis_connections_host_b": host_b_redis,
            "redis_connections_host_a": redis_total - host_b_redis,
        }

    def close(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        self.redis.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def one_run(system: str, sockets: int, options: WsOptions, peer_python: str) -> Iterator[Run]:
    run = Run(system, sockets, options, peer_python)
    try:
        yield run
    finally:
        run.close()


def ratios(results: list[dict[str, Any]], floor_us: float | None = None) -> list[dict[str, Any]]:
    """circus-events against the best peer, per socket count, from the same run;
    with ``floor_us`` (:mod:`.ws_floor`), the ratio a bare send() per delivery would reach."""
    rows = []
    for sockets in sorted({r["sockets"] for r in results}):
        ce = next((r for r in results if r["sockets"] == sockets and r["system"] == "ce"), None)
        peers = [
            r
            for r in results
            if r["sockets"] == sockets and r["system"] in PEERS and r.get("deliveries_per_cpu_s")
        ]
        if ce is None or not peers or not ce.get("deliveries_per_cpu_s"):
            continue
        best = max(peers, key=lambda r: r["deliveries_per_cpu_s"])
        row = {
            "sockets": sockets,
            "best_peer": best["system"],
            "cpu_ratio": round(ce["deliveries_per_cpu_s"] / best["deliveries_per_cpu_s"], 2),
            "cpu_target": TARGET_CPU_RATIO,
            "ce_p99_ms": ce["p99_ms"],
            "best_peer_p99_ms": best["p99_ms"],
            "ce_bytes_per_idle_socket": ce["bytes_per_idle_socket"],
            "idle_target_bytes": TARGET_IDLE_BYTES,
        }
        if floor_us:
            # What a server that did nothing but one send() per delivery would reach.
            row["floor_cpu_ratio"] = round(1e6 / floor_us / best["deliveries_per_cpu_s"], 2)
        rows.append(row)
    return rows


def bench_websocket(
    options: WsOptions,
    out_dir: str | None = None,
    say: Callable[[str], None] = print,
    peer_python: str | None = None,
) -> dict[str, Any]:
    """Measure every system at every socket count; print a table, write websocket.json."""
    versions: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    systems = list(options.systems)
    if peer_python is None and any(s in PEERS for s in systems):
        from . import peers  # noqa: PLC0415

        try:
            peer_python, versions = peers.ensure_env(say)
        except peers.PeersUnavailable as exc:
            for system in PEERS:
                unavailable[system] = str(exc)
            systems = [s for s in systems if s not in PEERS]
    results: list[dict[str, Any]] = []
    for sockets in options.sockets:
        for system in systems:
            say(f"websocket fan-out: {system}, {sockets} sockets, {options.workers} workers")
            try:
                with one_run(system, sockets, options, peer_python or sys.executable) as run:
                    results.append(run.measure())
            except (RuntimeError, OSError) as exc:
                unavailable[f"{system}@{sockets}"] = str(exc)
                say(f"  failed: {exc}")
    floor_us = None
    if results:
        say("websocket fan-out: the floor, one send() per socket per event")
        floor_us = round(send_floor_us(min(max(options.sockets), FLOOR_SOCKETS)), 2)
    report = {
        "options": dataclasses.asdict(options),
        "peers": versions,
        "results": results,
        "send_floor_us": floor_us,
        "ratios": ratios(results, floor_us),
        "unavailable": unavailable,
    }
    print_table(report, say)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "websocket.json"), "w") as f:
            json.dump(report, f, indent=2)
    return report


def print_table(report: dict[str, Any], say: Callable[[str], None]) -> None:
    results = report["results"]
    if not results:
        say("websocket fan-out: nothing measured")
        return
    keys = [k for k in results[0] if k not in ("workers", "duration")]
    say("")
    for key in keys:
        say(f"{key:>26}: " + "".join(f"{r.get(key)!s:>13}" for r in results))
    for row in report["ratios"]:
        verdict = "met" if row["cpu_ratio"] >= row["cpu_target"] else "NOT met"
        say(
            f"{row['sockets']} sockets: {row['cpu_ratio']}x {row['best_peer']}'s deliveries "
            f"per CPU second (target >= {row['cpu_target']}x: {verdict}); p99 "
            f"{row['ce_p99_ms']} ms vs {row['best_peer_p99_ms']} ms; "
            f"{row['ce_bytes_per_idle_socket']} B per idle socket"
        )
        if "floor_cpu_ratio" in row:
            say(
                f"  floor: one send() per delivery costs {report['send_floor_us']} us of CPU; "
                f"a server doing nothing else would reach {row['floor_cpu_ratio']}x "
                f"{row['best_peer']}'s deliveries per CPU second"
            )


def main(argv: list[str] | None = None, stream: IO[str] | None = None) -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--system",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, of {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--sockets", default="1000,5000", help="comma-separated counts")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--deliveries", type=float, default=20_000.0, help="deliveries/s: the rate's default"
    )
    parser.add_argument("--rate", type=float, help="events/s published on host A")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="200 and 1000 sockets, 5 s")
    parser.add_argument("--no-direct", action="store_true", help="circus-events: no direct writes")
    parser.add_argument("--out", help="directory for websocket.json")
    args = parser.parse_args(argv)
    options = WsOptions(
        sockets=tuple(int(n) for n in args.sockets.split(",")),
        workers=args.workers,
        deliveries=args.deliveries,
        rate=args.rate,
        duration=args.duration,
        systems=tuple(args.system.split(",")),
        direct_writes=not args.no_direct,
    )
    if args.quick:
        options = dataclasses.replace(options, sockets=(200, 1000), duration=5.0)
    unknown = [s for s in options.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system {unknown[0]!r} (known: {', '.join(SYSTEMS)})")
    bench_websocket(options, args.out, say=lambda text: print(text, file=stream or sys.stdout))
