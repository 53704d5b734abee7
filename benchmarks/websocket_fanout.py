"""Websocket fan-out: events published on host A, delivered to N sockets on host B.

Host B runs ``--workers`` hub processes (uvicorn + Starlette, the ASGI
adapter), each on its own port; client processes (the ``websockets``
library) open ``--sockets`` sockets spread over them and subscribe to
``bench.*``; a publisher on host A sends ``--rate`` events/s for
``--duration`` seconds. Everything runs on this machine: a private
redis-server on a free port (never 6379) and one bridge per simulated host.

Measured: deliveries/s, latency p50/p99 (publish to client receive, one
clock), hub CPU seconds per 10k deliveries (utime+stime of the hub processes
over the publishing window), hub memory per idle socket (RSS growth of the
hub processes when the sockets connect, divided by their number), Redis
connections per host.

Peers in the same run (``--system ce,socketio,broadcaster``), each in its
documented set-up with the same websocket clients: python-socketio with
``AsyncRedisManager`` (clients speak Engine.IO 4 over the websocket) and
broadcaster with Starlette (one Redis subscription per websocket). Not yet:
channels with channels_redis. broadcaster 0.3.1 with redis-py 8.1 delivered
nothing here: its listener task starts ``listen()`` before the first
subscription is registered, returns at once, and then waits forever (the
silent death STYLE.md warns about); its numbers need a fixed broadcaster.

Usage::

    .venv/bin/python benchmarks/websocket_fanout.py --quick
    .venv/bin/python benchmarks/websocket_fanout.py --sockets 1000 --workers 4 --rate 20
    .venv/bin/python benchmarks/websocket_fanout.py --quick --system ce,socketio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CLIENT_PROCESSES = 2
TICKS = os.sysconf("SC_CLK_TCK")


# -- roles run in child processes ----------------------------------------------------


async def profile_to(path: str) -> None:
    """Profile this server, written every second (uvicorn exits by re-raising SIGTERM)."""
    import cProfile  # noqa: PLC0415

    profiler = cProfile.Profile()
    profiler.enable()
    while True:
        await asyncio.sleep(1.0)
        profiler.dump_stats(path)
        profiler.enable()  # dump_stats stops it


async def serve(args: argparse.Namespace) -> None:
    import uvicorn  # noqa: PLC0415

    if os.environ.get("WSB_PROFILE"):  # a developer's switch: profile the server processes
        profiling = asyncio.create_task(profile_to(f"{os.environ['WSB_PROFILE']}.{args.port}"))
        assert profiling

    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": args.port,
        "log_level": "warning",
        "backlog": 4096,
        "ws_per_message_deflate": False,
    }
    if args.system == "ce":
        from starlette.applications import Starlette  # noqa: PLC0415
        from starlette.routing import WebSocketRoute  # noqa: PLC0415

        from circus_events import AsyncBus  # noqa: PLC0415
        from circus_events.websocket import Hub  # noqa: PLC0415

        async with AsyncBus(dir=args.dir, worker=args.worker, host="host-b") as bus:
            hub = Hub(bus, direct_writes=not args.no_direct)
            app = Starlette(routes=[WebSocketRoute("/events", hub.asgi)])
            config = uvicorn.Config(app, lifespan="off", **{**options, **hub.uvicorn_options()})
            await uvicorn.Server(config).serve()
    elif args.system == "socketio":
        # python-socketio's documented multi-process set-up: AsyncRedisManager.
        import socketio  # noqa: PLC0415

        manager = socketio.AsyncRedisManager(args.redis_url)
        sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
        await uvicorn.Server(uvicorn.Config(socketio.ASGIApp(sio), **options)).serve()
    else:
        # broadcaster's documented Starlette set-up: one subscribe per websocket.
        from broadcaster import Broadcast  # noqa: PLC0415
        from starlette.applications import Starlette  # noqa: PLC0415
        from starlette.routing import WebSocketRoute  # noqa: PLC0415
        from starlette.websockets import WebSocket  # noqa: PLC0415

        broadcast = Broadcast(args.redis_url)

        async def endpoint(websocket: WebSocket) -> None:
            await websocket.accept()
            async with broadcast.subscribe(channel="bench") as subscriber:
                async for event in subscriber:  # type: ignore[union-attr]
                    await websocket.send_text(event.message)

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> Any:
            await broadcast.connect()
            yield
            await broadcast.disconnect()

        app = Starlette(routes=[WebSocketRoute("/events", endpoint)], lifespan=lifespan)
        await uvicorn.Server(uvicorn.Config(app, lifespan="on", **options)).serve()


async def open_socket(system: str, url: str) -> Any:
    from websockets.asyncio.client import connect  # noqa: PLC0415

    if system == "socketio":  # Engine.IO 4 over a websocket, no polling
        address = url.replace("/events", "/socket.io/?EIO=4&transport=websocket")
        ws = await connect(address, compression=None, open_timeout=60)
        await ws.recv()  # "0{sid...}"
        await ws.send("40")
        await ws.recv()  # "40{sid...}"
        return ws
    ws = await connect(url, compression=None, open_timeout=60)
    if system == "ce":
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "subscribe", "pattern": "bench.*"}))
    return ws


def payload(system: str, message: Any) -> Any:
    """The published dict in one received message, "ping", or None."""
    if system == "socketio":
        if message == "2":
            return "ping"
        if not message.startswith("42"):
            return None
        return json.loads(message[2:])[1]
    frame = json.loads(message)
    return frame.get("data") if system == "ce" else frame


async def clients(args: argparse.Namespace) -> None:
    urls = args.urls.split(",")
    latencies: list[float] = []
    received = 0
    sockets = [await open_socket(args.system, urls[n % len(urls)]) for n in range(args.count)]

    async def read(ws: Any) -> None:
        nonlocal received
        async for message in ws:
            now = time.time()
            data = payload(args.system, message)
            if data == "ping":
                await ws.send("3")
            elif isinstance(data, dict) and data.get("m"):
                received += 1
                if received % 10 == 0:  # a sample keeps this process light
                    latencies.append(now - data["t"])
            elif isinstance(data, dict) and "probe" in data:
                probed.add(id(ws))

    probed: set[int] = set()
    tasks = [asyncio.create_task(read(ws)) for ws in sockets]
    print("CONNECTED", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        command = (await reader.readline()).decode().strip()
        if command == "PROBED":
            print(json.dumps({"probed": len(probed)}), flush=True)
        elif command == "REPORT":
            print(json.dumps({"received": received, "latencies": latencies}), flush=True)
        elif command in ("", "EXIT"):
            break
    for task in tasks:
        task.cancel()
    for ws in sockets:
        ws.transport.abort()


# -- the orchestrator ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    from circus_events.bench.servers import free_port as free  # noqa: PLC0415

    return free()


def wait_listening(port: int, timeout: float) -> None:
    """Wait until a server accepts TCP connections on ``port``."""
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no server on port {port} after {timeout:g}s")
        time.sleep(0.05)  # polling the port


def ask(process: subprocess.Popen[bytes], command: str) -> Any:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(command.encode() + b"\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())


class Publisher:
    """Publishes on "host A": through the bridge (circus-events) or the peer's own way."""

    def __init__(self, system: str, directory: Path, redis_url: str) -> None:
        self.system, self.directory, self.redis_url = system, directory, redis_url
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> Any:
        if self.system == "ce":
            from circus_events import Bus  # noqa: PLC0415

            self.bus = Bus(dir=str(self.directory), worker="host-a/publisher", host="host-a")
            return lambda data: self.bus.publish("bench.tick", data)
        if self.system == "socketio":
            import socketio  # noqa: PLC0415

            manager = socketio.AsyncRedisManager(self.redis_url, write_only=True)
            return lambda data: self.loop.run_until_complete(manager.emit("tick", data))
        from broadcaster import Broadcast  # noqa: PLC0415

        broadcast = Broadcast(self.redis_url)
        self.loop.run_until_complete(broadcast.connect())
        self.broadcast = broadcast
        return lambda data: self.loop.run_until_complete(
            broadcast.publish("bench", json.dumps(data))
        )

    def __exit__(self, *exc: object) -> None:
        if self.system == "ce":
            self.bus.flush()
            self.bus.close()
        elif self.system == "broadcaster":
            self.loop.run_until_complete(self.broadcast.disconnect())
        self.loop.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from circus_events.bench.servers import RedisServer  # noqa: PLC0415

    home = Path(tempfile.mkdtemp(prefix="ce-wsb-", dir="/tmp"))
    started: list[subprocess.Popen[bytes]] = []
    redis = RedisServer(home)
    redis.start()
    try:
        env = {**os.environ, "CIRCUS_EVENTS_REDIS_URL": redis.url}
        dirs = {}
        for host in ("host-a", "host-b"):
            dirs[host] = home / host
            dirs[host].mkdir()
            if args.system != "ce":
                continue  # the peers talk to Redis themselves
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "circus_events",
                        "bridge",
                        "--dir",
                        str(dirs[host]),
                        "--host",
                        host,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # bridges bind their sockets; clients queue until then anyway
        ports = [free_port() for _ in range(args.workers)]
        servers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE),
                    "--role",
                    "server",
                    "--dir",
                    str(dirs["host-b"]),
                    "--worker",
                    f"host-b/hub-{n}",
                    "--port",
                    str(port),
                    "--system",
                    args.system,
                    "--redis-url",
                    redis.url,
                    *(["--no-direct"] if args.no_direct else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n, port in enumerate(ports)
        ]
        started += servers
        for port in ports:
            wait_listening(port, 60)
        idle_rss = sum(rss_bytes(s.pid) for s in servers)
        urls = ",".join(f"ws://127.0.0.1:{p}/events" for p in ports)
        per_process = args.sockets // CLIENT_PROCESSES
        client_procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE),
                    "--role",
                    "clients",
                    "--urls",
                    urls,
                    "--count",
                    str(per_process),
                    "--system",
                    args.system,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for _ in range(CLIENT_PROCESSES)
        ]
        started += client_procs
        for process in client_procs:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"CONNECTED"
        sockets = per_process * CLIENT_PROCESSES
        with Publisher(args.system, dirs["host-a"], redis.url) as publish:
            deadline = time.monotonic() + 60
            while sum(ask(p, "PROBED")["probed"] for p in client_procs) < sockets:
                if time.monotonic() > deadline:
                    raise RuntimeError("the sockets' subscriptions never became live")
                publish({"probe": True})
                time.sleep(0.2)  # probing rate
            connected_rss = sum(rss_bytes(s.pid) for s in servers)
            cpu_before = sum(cpu_seconds(s.pid) for s in servers)
            start = time.monotonic()
            count = int(args.rate * args.duration)
            for n in range(count):
                due = start + n / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the publish rate
                publish({"m": 1, "t": time.time(), "i": n})
        expected = count * sockets
        received = 0
        drain_deadline = time.monotonic() + 30
        while True:
            reports = [ask(p, "REPORT") for p in client_procs]
            received = sum(r["received"] for r in reports)
            if received >= expected or time.monotonic() > drain_deadline:
                break
            time.sleep(0.2)  # waiting for the last deliveries
        elapsed = time.monotonic() - start
        cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
        latencies = sorted(x for r in reports for x in r["latencies"])
        redis_clients = redis.client().client_list()
        result = {
            "system": args.system,
            "sockets": sockets,
            "workers": args.workers,
            "rate": args.rate,
            "duration": args.duration,
            "expected": expected,
            "received": received,
            "deliveries_per_s": round(received / elapsed),
            "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
            if latencies
            else None,
            "hub_cpu_s_per_10k": round(cpu / max(received, 1) * 10_000, 4),
            "hub_bytes_per_idle_socket": round((connected_rss - idle_rss) / max(sockets, 1)),
            # Less this script's own; for circus-events, what the two bridges hold;
            # for the peers, host B's servers plus the publisher's.
            "redis_connections": len(redis_clients) - 1,
        }
        for process in client_procs:
            ask_exit(process)
        return result
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        redis.stop()
        import shutil  # noqa: PLC0415

        shutil.rmtree(home, ignore_errors=True)


def ask_exit(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(b"EXIT\n")
        process.stdin.close()
    except BrokenPipeError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["run", "server", "clients"], default="run")
    parser.add_argument(
        "--system", default="ce", help="ce, socketio, broadcaster, or several comma-separated"
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0, help="events/s published on host A")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="200 sockets, 2 workers, 5 s")
    parser.add_argument(
        "--no-direct", action="store_true", help="circus-events: no direct frame writes"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    # child roles
    parser.add_argument("--dir")
    parser.add_argument("--worker")
    parser.add_argument("--port", type=int)
    parser.add_argument("--urls")
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(serve(args))
        return
    if args.role == "clients":
        asyncio.run(clients(args))
        return
    if args.quick:
        args.sockets, args.workers, args.duration = 200, 2, 5.0
    results = []
    for system in args.system.split(","):
        args.system = system
        results.append(run(args))
    if args.json:
        print(json.dumps(results))
        return
    for key in results[0]:
        print(f"{key:>26}: " + "".join(f"{r.get(key)!s:>14}" for r in results))


if __name__ == "__main__":
    main()
