"""The websocket fan-out bench's child processes, run by path.

A server (host B), the clients, or the publisher (host A), for one system:

* ``ce``: circus-events, a :class:`~circus_events.websocket.Hub` per uvicorn
  worker (Starlette, the ASGI adapter) over an ``AsyncBus``; events published
  with an ``AsyncBus`` on host A. Runs with circus-events' own interpreter.
* ``ce-queued``: the same with ``Hub(direct_writes=False)``: every frame
  through the socket's queue, writer task and the framework's ``send``.
* ``socketio``: python-socketio's documented multi-process set-up,
  ``AsyncServer(client_manager=AsyncRedisManager(url))`` as an ASGI app;
  ``AsyncRedisManager(url, write_only=True).emit`` on host A.
* ``broadcaster``: broadcaster's documented Starlette set-up, ``async with
  broadcast.subscribe(channel)`` per websocket; ``broadcast.publish`` on host A.
* ``channels``: Django channels' documented set-up, an
  ``AsyncWebsocketConsumer`` that joins a group, ``RedisChannelLayer`` from
  channels_redis; ``group_send`` on host A.

Every server runs under uvicorn with the same options; the clients are the
same for all (the ``websockets`` library; socket.io's clients speak Engine.IO
4 over the websocket, nothing more). The peers run with the peers'
interpreter (``.venv-bench-peers``, see :mod:`.peers`), so this file imports
only the standard library at the top, and each library where it is used.

Protocol with the orchestrator (:mod:`.ws_fanout`), one line each on stdin
and stdout: clients print ``CONNECTED`` then answer ``PROBED`` and
``REPORT`` with JSON; the publisher prints ``READY``, answers ``PROBE`` with
``OK`` and ``RUN <rate> <count>`` with ``DONE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import resource
import sys
import time
from typing import Any

#: The channel (or room, group) every system publishes on.
CHANNEL = "bench"
#: What marks a measured event in a message, compact JSON or not (no other
#: key in any system's frames ends in "m").
MARK = '"m":'
#: One measured event in this many is parsed for its latency: the clients
#: must keep up with every system, or their own lag is what gets measured.
SAMPLE = 10
#: Sockets a client process opens at once.
CONNECT_CONCURRENCY = 50


def raise_nofile() -> None:
    """Thousands of sockets: the soft RLIMIT_NOFILE up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def read_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- servers (host B) ------------------------------------------------------------------


def uvicorn_options(port: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "backlog": 4096,
        "ws_per_message_deflate": False,
        "lifespan": "off",
    }


async def serve_ce(args: argparse.Namespace) -> None:
    import uvicorn  # noqa: PLC0415
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.routing import WebSocketRoute  # noqa: PLC0415

    from circus_events import AsyncBus  # noqa: PLC0415
    from circus_events.websocket import Hub  # noqa: PLC0415

    async with AsyncBus(dir=args.dir, worker=args.worker, host="host-b") as bus:
        # ce-queued: every frame through the queue and Starlette's send, as
        # before direct writes (Hub(direct_writes=False)).
        direct = not args.no_direct and args.system != "ce-queued"
        hub = Hub(bus, direct_writes=direct)
        app = Starlette(routes=[WebSocketRoute("/events", hub.asgi)])
        options = {**uvicorn_options(args.port), **hub.uvicorn_options()}
        await uvicorn.Server(uvicorn.Config(app, **options)).serve()


async def serve_socketio(args: argparse.Namespace) -> None:
    uvicorn = importlib.import_module("uvicorn")
    socketio = importlib.import_module("socketio")
    manager = socketio.AsyncRedisManager(args.redis_url)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    app = socketio.ASGIApp(sio)
    await uvicorn.Server(uvicorn.Config(app, **uvicorn_options(args.port))).serve()


async def serve_broadcaster(args: argparse.Namespace) -> None:
    uvicorn = importlib.import_module("uvicorn")
    broadcast = importlib.import_module("broadcaster").Broadcast(args.redis_url)
    applications = importlib.import_module("starlette.applications")
    routing = importlib.import_module("starlette.routing")

    async def endpoint(websocket: Any) -> None:
        await websocket.accept()
        async with broadcast.subscribe(channel=CHANNEL) as subscriber:
            async for event in subscriber:
                await websocket.send_text(event.message)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await broadcast.connect()
        yield
        await broadcast.disconnect()

    app = applications.Starlette(
        routes=[routing.WebSocketRoute("/events", endpoint)], lifespan=lifespan
    )
    options = {**uvicorn_options(args.port), "lifespan": "on"}
    await uvicorn.Server(uvicorn.Config(app, **options)).serve()


def channels_settings(redis_url: str) -> None:
    django = importlib.import_module("django")
    settings = importlib.import_module("django.conf").settings
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [redis_url]},
            }
        },
    )
    django.setup()


async def serve_channels(args: argparse.Namespace) -> None:
    channels_settings(args.redis_url)
    uvicorn = importlib.import_module("uvicorn")
    consumer_base = importlib.import_module("channels.generic.websocket").AsyncWebsocketConsumer
    routing = importlib.import_module("channels.routing")
    path = importlib.import_module("django.urls").path

    class BenchConsumer(consumer_base):  # type: ignore[misc, valid-type]
        async def connect(self) -> None:
            await self.channel_layer.group_add(CHANNEL, self.channel_name)
            await self.accept()

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard(CHANNEL, self.channel_name)

        async def bench_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=event["text"])

    app = routing.ProtocolTypeRouter(
        {"websocket": routing.URLRouter([path("events", BenchConsumer.as_asgi())])}
    )
    await uvicorn.Server(uvicorn.Config(app, **uvicorn_options(args.port))).serve()


SERVERS = {
    "ce": serve_ce,
    "ce-queued": serve_ce,
    "socketio": serve_socketio,
    "broadcaster": serve_broadcaster,
    "channels": serve_channels,
}


# -- clients ---------------------------------------------------------------------------


async def open_socket(system: str, url: str) -> Any:
    from websockets.asyncio.client import connect  # noqa: PLC0415

    if system == "socketio":  # Engine.IO 4 over a websocket, no polling
        address = url.replace("/events", "/socket.io/?EIO=4&transport=websocket")
        ws = await connect(address, compression=None, open_timeout=120, max_size=None)
        await ws.recv()  # "0{sid...}"
        await ws.send("40")
        await ws.recv()  # "40{sid...}"
        return ws
    ws = await connect(url, compression=None, open_timeout=120, max_size=None)
    if system.startswith("ce"):
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "subscribe", "pattern": "bench*"}))
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
    return frame.get("data") if system.startswith("ce") else frame


async def clients(args: argparse.Namespace) -> None:
    urls = args.urls.split(",")
    latencies: list[float] = []
    received = 0
    probed: set[int] = set()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def opened(n: int) -> Any:
        async with gate:
            return await open_socket(args.system, urls[n % len(urls)])

    sockets = await asyncio.gather(*(opened(n) for n in range(args.count)))

    async def read(ws: Any) -> None:
        nonlocal received
        with contextlib.suppress(Exception):
            async for message in ws:
                if MARK in message:  # a measured event: parse 1 in 10 only
                    received += 1
                    if received % SAMPLE == 0:
                        now = time.time()
                        latencies.append(now - payload(args.system, message)["t"])
                    continue
                data = payload(args.system, message)
                if data == "ping":
                    await ws.send("3")
                elif isinstance(data, dict) and "probe" in data:
                    probed.add(id(ws))

    tasks = [asyncio.create_task(read(ws)) for ws in sockets]
    say("CONNECTED")
    reader = await read_lines()
    while True:
        command = (await reader.readline()).decode().strip()
        if command == "PROBED":
            say(json.dumps({"probed": len(probed)}))
        elif command == "REPORT":
            say(json.dumps({"received": received, "latencies": latencies}))
        elif command in ("", "EXIT"):
            break
    for task in tasks:
        task.cancel()
    for ws in sockets:
        ws.transport.abort()


# -- the publisher (host A) ------------------------------------------------------------


@contextlib.asynccontextmanager
async def publisher(args: argparse.Namespace) -> Any:
    """A ``publish(dict)`` coroutine function, in the system's documented way."""
    if args.system.startswith("ce"):
        from circus_events import AsyncBus  # noqa: PLC0415

        async with AsyncBus(dir=args.dir, worker="host-a/publisher", host="host-a") as bus:
            yield lambda data: bus.publish("bench.tick", data)
            await bus.flush()
    elif args.system == "socketio":
        socketio = importlib.import_module("socketio")
        manager = socketio.AsyncRedisManager(args.redis_url, write_only=True)
        yield lambda data: manager.emit("tick", data)
    elif args.system == "broadcaster":
        broadcast = importlib.import_module("broadcaster").Broadcast(args.redis_url)
        await broadcast.connect()
        yield lambda data: broadcast.publish(CHANNEL, json.dumps(data))
        await broadcast.disconnect()
    else:
        channels_settings(args.redis_url)
        layer = importlib.import_module("channels.layers").get_channel_layer()
        yield lambda data: layer.group_send(
            CHANNEL, {"type": "bench.message", "text": json.dumps(data)}
        )


async def publish(args: argparse.Namespace) -> None:
    async with publisher(args) as send:
        say("READY")
        reader = await read_lines()
        while True:
            command = (await reader.readline()).decode().split()
            if not command or command[0] == "EXIT":
                break
            if command[0] == "PROBE":
                await send({"probe": True})
                say("OK")
            elif command[0] == "RUN":
                rate, count = float(command[1]), int(command[2])
                start = time.monotonic()
                for n in range(count):
                    delay = start + n / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing the publish rate
                    await send({"m": 1, "t": time.time(), "i": n})
                say("DONE")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a websocket fan-out bench process")
    parser.add_argument("role", choices=["server", "clients", "publisher"])
    parser.add_argument("--system", required=True, choices=sorted(SERVERS))
    parser.add_argument("--redis-url")
    parser.add_argument("--dir")
    parser.add_argument("--worker")
    parser.add_argument("--port", type=int)
    parser.add_argument("--urls")
    parser.add_argument("--count", type=int)
    parser.add_argument("--no-direct", action="store_true")
    args = parser.parse_args(argv)
    raise_nofile()
    if args.role == "server":
        if os.environ.get("WSB_PROFILE"):  # a developer's switch: profile the servers
            profile_to = f"{os.environ['WSB_PROFILE']}.{args.port}"
            asyncio.run(profiled(SERVERS[args.system](args), profile_to))
        else:
            asyncio.run(SERVERS[args.system](args))
    elif args.role == "clients":
        asyncio.run(clients(args))
    else:
        asyncio.run(publish(args))


async def profiled(serving: Any, path: str) -> None:
    """Profile a server, written every second (uvicorn exits by re-raising SIGTERM)."""
    import cProfile  # noqa: PLC0415

    profiler = cProfile.Profile()
    profiler.enable()
    task = asyncio.ensure_future(serving)
    while not task.done():
        await asyncio.wait([task], timeout=1.0)
        profiler.dump_stats(path)
        profiler.enable()  # dump_stats stops it


if __name__ == "__main__":
    main()
