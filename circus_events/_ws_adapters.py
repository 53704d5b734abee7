"""The websocket hub's framework adapters: ASGI (Starlette, FastAPI) and the
``websockets`` library, each reduced to one small :class:`Transport`, and the
JavaScript client the hub serves. The hub itself (``websocket.Hub``) does not
know which framework it talks to.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from importlib import resources
from typing import Any, Protocol

__all__ = ["AsgiApp", "StarletteTransport", "Transport", "WebsocketsTransport", "client_js"]


class Transport(Protocol):
    """What the hub needs from a websocket, whatever the framework."""

    async def receive(self) -> str | bytes | None: ...  # None: the peer went away
    async def send(self, text: str) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...
    def abort(self) -> None: ...


class Servable(Protocol):
    """What the ASGI app needs of the hub."""

    async def serve(self, websocket: Any) -> None: ...


class AsgiApp:
    """``hub.asgi``: an ASGI app object, not a method, so that Starlette's
    ``WebSocketRoute``/``Mount`` pass it ``(scope, receive, send)``."""

    def __init__(self, hub: Servable) -> None:
        self.hub = hub

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """Websockets are served; ``GET .../client.js`` gets the JS client."""
        if scope["type"] == "websocket":
            from starlette.websockets import WebSocket  # noqa: PLC0415

            await self.hub.serve(WebSocket(scope, receive, send))
        elif scope["type"] == "http":
            if scope.get("method") in ("GET", "HEAD") and scope["path"].endswith("/client.js"):
                body = client_js()
                status = 200
                headers = [
                    (b"content-type", b"text/javascript; charset=utf-8"),
                    (b"cache-control", b"max-age=300"),
                ]
            else:
                body, status, headers = b"not found\n", 404, [(b"content-type", b"text/plain")]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "lifespan":  # served alone: nothing to start or stop
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return


def client_js() -> bytes:
    """The dependency-free JavaScript client, as served by the hub."""
    return resources.files("circus_events").joinpath("static/client.js").read_bytes()


# -- transports ------------------------------------------------------------------------


class StarletteTransport:
    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket

    async def accept(self) -> None:
        await self.websocket.accept()

    async def receive(self) -> str | bytes | None:
        try:
            message = await self.websocket.receive()
        except Exception:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        await self.websocket.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)

    def abort(self) -> None:
        """ASGI has no abort: the server's ping timeout ends a peer that does not read."""


class WebsocketsTransport:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def receive(self) -> str | bytes | None:
        try:
            message: str | bytes = await self.connection.recv()
        except Exception:
            return None
        return message

    async def send(self, text: str) -> None:
        await self.connection.send(text)

    async def close(self, code: int, reason: str) -> None:
        await self.connection.close(code, reason)

    def abort(self) -> None:
        transport = getattr(self.connection, "transport", None)
        if transport is not None:
            transport.abort()
