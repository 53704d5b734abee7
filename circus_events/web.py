"""The live page of ``circus-events web``: a Starlette app over a :class:`~.websocket.Hub`.

The page (``static/live.html``) is a browser client of the hub like any
other: it loads ``client.js``, subscribes to a pattern (``*`` unless told)
and counts rates per host and per channel itself. Which hosts and workers
are present comes from the bridges' status (through Redis for every host,
or this host's bridge alone), read every :data:`STATUS_INTERVAL` seconds and
given to this process's sockets on :data:`STATUS_CHANNEL` (scope
``process``: it never leaves the page's server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

from .aio import AsyncBus
from .websocket import Hub

__all__ = [
    "STATUS_CHANNEL",
    "STATUS_INTERVAL",
    "build_app",
    "listen_socket",
    "live_page",
    "page_url",
    "serve",
]

log = logging.getLogger("circus_events.web")

#: Where the page gets the hosts and workers present (this process only).
STATUS_CHANNEL: Final = "circus-events.web.status"
#: Seconds between two status reads: one Redis round trip each (or one control query).
STATUS_INTERVAL: Final = 2.0

StatusSource = Callable[[], list[dict[str, Any]]]


def live_page() -> bytes:
    return resources.files("circus_events").joinpath("static/live.html").read_bytes()


def build_app(hub: Hub) -> Any:
    """The Starlette app: ``/`` the page, ``/events`` the hub, ``/static/client.js``."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Mount, Route, WebSocketRoute  # noqa: PLC0415

    async def page(request: Request) -> Response:
        return Response(live_page(), media_type="text/html; charset=utf-8")

    return Starlette(
        routes=[
            Route("/", page),
            WebSocketRoute("/events", hub.asgi),
            Mount("/static", app=hub.asgi),
        ]
    )


async def publish_status(bus: AsyncBus, source: StatusSource, interval: float) -> None:
    """Read the bridges' status now and then; hand it to this process's sockets."""
    while True:
        try:
            hosts = await asyncio.to_thread(source)
        except Exception as exc:  # status is best effort: the page says what failed
            hosts = []
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = ""
        summary = [
            {
                "host": report.get("host"),
                "workers": report.get("workers", []),
                "mode": report.get("mode") or (report.get("redis") or {}).get("mode"),
                "uptime": report.get("uptime"),
            }
            for report in hosts
        ]
        await bus.publish(STATUS_CHANNEL, {"hosts": summary, "error": error}, scope="process")
        await asyncio.sleep(interval)


def listen_socket(bind: str, port: int) -> socket.socket:
    """A bound socket for the page, made before uvicorn starts: an address in use
    or unknown is an ``OSError`` for the caller to word (uvicorn would print its
    traceback), and port 0 gets its real number. ``socket.gaierror``: ``bind``
    does not resolve."""
    family, kind, proto, _, address = socket.getaddrinfo(
        bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def page_url(sock: socket.socket) -> str:
    """The page's address on ``sock``, with its real port."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve(
    bus: AsyncBus,
    source: StatusSource,
    *,
    bind: str = "127.0.0.1",
    port: int = 8080,
    ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve the live page until cancelled (or SIGINT/SIGTERM through uvicorn),
    on ``sock`` if given (see :func:`listen_socket`), else on ``bind``:``port``."""
    import uvicorn  # noqa: PLC0415

    hub = Hub(bus)
    config = uvicorn.Config(
        build_app(hub), host=bind, port=port, log_level="warning", **hub.uvicorn_options()
    )
    server = uvicorn.Server(config)
    status = asyncio.create_task(publish_status(bus, source, STATUS_INTERVAL))
    serving = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)  # poll: uvicorn has no started event
        if server.started and ready is not None:
            ready(f"http://{bind}:{port}/" if sock is None else page_url(sock))
        await serving
    finally:
        status.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await status
        await hub.close()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
