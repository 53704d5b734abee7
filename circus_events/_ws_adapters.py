"""The websocket hub's framework adapters: ASGI (Starlette, FastAPI) and the
``websockets`` library, each reduced to one small :class:`Transport`, and the
JavaScript client the hub serves. The hub itself (``websocket.Hub``) does not
know which framework it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, MutableMapping
from importlib import resources
from typing import Any, Final, Protocol

__all__ = [
    "CLOSE_TIMEOUT",
    "DIRECT_HIGH_WATER",
    "AsgiApp",
    "DirectWriter",
    "StarletteTransport",
    "Transport",
    "WebsocketsTransport",
    "client_js",
]

#: Bytes a socket's transport may hold unsent before the hub stops writing to it
#: directly: past it, frames wait in the hub's bounded queue and go through the
#: server library's own flow-controlled send.
DIRECT_HIGH_WATER: Final = 64 * 1024
#: Longest wait for a closing socket's close handshake before the TCP
#: connection is cut (a peer that never reads never answers).
CLOSE_TIMEOUT: Final = 2.0

log = logging.getLogger("circus_events.websocket")


class Transport(Protocol):
    """What the hub needs from a websocket, whatever the framework."""

    #: Set when pre-built frames may be written straight to the socket.
    direct: DirectWriter | None

    async def receive(self) -> str | bytes | None: ...  # None: the peer went away
    async def send(self, text: str) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...
    def abort(self) -> None: ...
    async def keepalive(self, interval: float, name: str) -> None: ...


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


# -- direct writes ---------------------------------------------------------------------


class DirectWriter:
    """Writes a pre-built frame (``protocol.wsframe``) straight to a socket's
    asyncio transport: one ``bytes`` object shared by every socket, no framing,
    no await, no task switch per socket. Used only with server libraries whose
    state it can read (uvicorn's ``websockets-sansio`` protocol, the default
    with websockets 14 or later, and the ``websockets`` library's asyncio
    server); other servers get the ordinary ``send``. Frames are whole, so they
    interleave safely with the library's own pings and close frame, and none
    is written once the library has sent its close frame."""

    __slots__ = ("is_open", "transport")

    def __init__(
        self, transport: asyncio.WriteTransport, is_open: Callable[[], bool] | None
    ) -> None:
        self.transport = transport
        #: The library's own "no close frame sent" check; None when a closing
        #: transport says it all. (The hub inlines ready() on its hot path.)
        self.is_open = is_open

    def ready(self) -> bool:
        """True when a frame may be written now (open, little unsent)."""
        transport = self.transport
        return (
            not transport.is_closing()
            and transport.get_write_buffer_size() <= DIRECT_HIGH_WATER
            and (self.is_open is None or self.is_open())
        )

    def write(self, frame: bytes) -> None:
        self.transport.write(frame)


def _uvicorn_transport(receive: Any) -> asyncio.Transport | None:
    """The asyncio transport under a uvicorn websocket protocol, else None."""
    protocol: Any = getattr(receive, "__self__", None)
    if not type(protocol).__module__.startswith("uvicorn.protocols.websockets."):
        return None
    transport = getattr(protocol, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


def _uvicorn_direct(receive: Any, transport: asyncio.Transport | None) -> DirectWriter | None:
    """The direct writer under uvicorn's websockets-sansio protocol, else None."""
    protocol: Any = getattr(receive, "__self__", None)
    if type(protocol).__module__ != "uvicorn.protocols.websockets.websockets_sansio_impl":
        return None
    if transport is None or not all(
        hasattr(protocol, name) for name in ("handshake_complete", "close_sent", "disconnected")
    ):
        return None
    # The hub writes only after its accept (handshake complete) and stops at its
    # own close; every other close (the peer's, a ping timeout, a lost
    # connection) closes the transport at once in this protocol.
    return DirectWriter(transport, None)


def _websockets_direct(connection: Any) -> DirectWriter | None:
    """The direct writer of a ``websockets.asyncio`` server connection, else None."""
    transport = getattr(connection, "transport", None)
    protocol = getattr(connection, "protocol", None)
    if not isinstance(transport, asyncio.WriteTransport) or protocol is None:
        return None
    try:
        from websockets.protocol import State  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the adapter needs websockets anyway
        return None
    return DirectWriter(transport, lambda: protocol.state is State.OPEN)


# -- transports ------------------------------------------------------------------------


class StarletteTransport:
    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket
        # Starlette keeps the server's receive callable as it came (its
        # exception handling wraps only send): under uvicorn, a bound method
        # of the connection's protocol, which holds the asyncio transport.
        receive = getattr(websocket, "_receive", None)
        self.raw = _uvicorn_transport(receive)
        self.direct = _uvicorn_direct(receive, self.raw)

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
        """uvicorn then closes its transport, which waits for the unsent bytes
        to go: to a peer that does not read, never. It is cut after CLOSE_TIMEOUT."""
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)
        self._abort_later()

    def abort(self) -> None:
        """Cut the TCP connection now: its file descriptor and buffers go at once."""
        if self.raw is not None:
            self.raw.abort()

    def _abort_later(self) -> None:
        if self.raw is not None:  # a no-op on a transport that closed by itself
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.raw.abort)

    async def keepalive(self, interval: float, name: str) -> None:
        """uvicorn pings, and on a ping timeout closes its transport without a
        word to the app, waiting for a peer that may never read: cut it."""
        raw = self.raw
        if raw is None:  # another server: its own keepalive is all there is
            return
        while not raw.is_closing():
            await asyncio.sleep(interval / 2)
        log.info("%s: closed by the server (ping timeout?): cut in %gs", name, CLOSE_TIMEOUT)
        self._abort_later()


class WebsocketsTransport:
    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.direct = _websockets_direct(connection)

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

    async def keepalive(self, interval: float, name: str) -> None:
        """Ping every ``interval``; a peer that does not answer within the next is cut."""
        while True:
            await asyncio.sleep(interval)
            try:
                pong = await self.connection.ping()
                await asyncio.wait_for(pong, interval)
            except TimeoutError:
                log.info("%s: no pong within %gs: dropped", name, interval)
                self.abort()
                return
            except Exception:
                return
