"""A websocket hub worker for the tests: uvicorn + Starlette (ASGI) or the websockets server.

Prints READY once it listens. Authorization: ``?token=`` in the URL is the
principal; ``bad`` (or none) is refused. ``reader`` may not subscribe to
``secret.*``; ``writer`` may publish to ``chat.*``; nobody else may publish.
Commands arrive on the bus channel ``test.control`` (``send_to``,
``broadcast``, ``stats`` answered on ``test.stats``), so the test drives both
adapters the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any
from urllib.parse import parse_qs

from circus_events import AsyncBus
from circus_events.websocket import Hub, Limits


def token_of(query: str) -> str | None:
    values = parse_qs(query).get("token")
    return values[0] if values else None


def authorize(websocket: Any) -> str | None:
    if hasattr(websocket, "query_params"):  # Starlette
        token = websocket.query_params.get("token")
    else:  # websockets: the request line
        token = token_of(websocket.request.path.partition("?")[2])
    return None if not token or token == "bad" else str(token)


def can_subscribe(principal: str, pattern: str) -> bool:
    return not (principal == "reader" and pattern.startswith("secret."))


async def can_publish(principal: str, channel: str) -> bool:
    return principal == "writer" and channel.startswith("chat.")


async def control(bus: AsyncBus, hub: Hub) -> None:
    async for event in bus.subscribe("test.control"):
        command = event.data
        if command.get("worker") not in (None, bus.worker):
            continue
        op = command["op"]
        if op == "send_to":
            await hub.send_to(command["socket"], command["channel"], command["data"])
        elif op == "broadcast":
            await hub.broadcast(command["channel"], command["data"])
        elif op == "stats":
            await bus.publish("test.stats", {"worker": bus.worker, **hub.stats()})


async def main(args: argparse.Namespace) -> None:
    limits = Limits(
        ping_interval=args.ping,
        queue_bytes=args.queue_bytes,
        queue_close_bytes=args.close_bytes,
        max_abuse=args.max_abuse,
    )
    async with AsyncBus(dir=args.dir, worker=args.worker, host=args.host) as bus:
        hub = Hub(
            bus,
            authorize=authorize,
            can_subscribe=can_subscribe,
            can_publish=can_publish,
            limits=limits,
        )
        if args.relay:
            hub.relay(args.relay)
        controller = asyncio.create_task(control(bus, hub))
        await bus.sync(10)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if args.kind == "asgi":
            import uvicorn  # noqa: PLC0415
            from starlette.applications import Starlette  # noqa: PLC0415
            from starlette.routing import Mount, WebSocketRoute  # noqa: PLC0415

            async def endpoint(websocket: Any) -> None:
                await hub.serve(websocket)

            app = Starlette(
                routes=[
                    WebSocketRoute("/events", hub.asgi),
                    WebSocketRoute("/endpoint", endpoint),
                    Mount("/static", app=hub.asgi),
                ]
            )
            config = uvicorn.Config(
                app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off",
                **hub.uvicorn_options(),
            )  # fmt: skip
            server = uvicorn.Server(config)
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            serving = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)  # poll: uvicorn has no started event
            print("READY", flush=True)
            await stop.wait()
            await hub.close()
            server.should_exit = True
            await serving
        else:
            import websockets  # noqa: PLC0415

            async with websockets.serve(
                hub.serve_websockets, "127.0.0.1", args.port, **hub.websockets_options()
            ):
                print("READY", flush=True)
                await stop.wait()
                await hub.close()
        controller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await controller


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=["asgi", "websockets"], default="asgi")
    parser.add_argument("--ping", type=float, default=20.0)
    parser.add_argument("--queue-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--close-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--max-abuse", type=int, default=20)
    parser.add_argument("--relay", default="")
    asyncio.run(main(parser.parse_args()))
