"""The websocket hub: every browser on every host gets the bus's events.

:class:`Hub` runs over an :class:`~circus_events.AsyncBus` and is the I/O
layer of :mod:`circus_events.protocol.wsproto`: the state machine, the send
queues and the fan-out table live there; here are the bus subscriptions, one
writer task per socket and the framework adapters:

* ASGI (Starlette, FastAPI): mount ``hub.asgi`` as a websocket route, or call
  ``await hub.serve(websocket)`` in an endpoint. An HTTP GET to ``hub.asgi``
  for a path ending in ``/client.js`` serves the JavaScript client.
* the ``websockets`` library: ``websockets.serve(hub.serve_websockets, ...,
  process_request=hub.process_request)`` (the latter serves ``client.js``).

Each bus event is encoded to JSON once, and its websocket frame built once
(server frames are unmasked: the same bytes for every socket). A socket with
nothing queued gets those bytes written straight to its transport (under
uvicorn's default protocol and the ``websockets`` library: no per-socket task
switch, framing or await); events already waiting go together, one write per
socket. A socket that has a backlog gets the same string queued; a queue never
waits, so one slow browser never slows the others (it gets ``gap`` frames,
then a 1013 close). The bus's own gaps (``on_gap``) reach the sockets that
lost the events as ``gap`` frames too. Ping/pong: the
``websockets`` adapter pings every ``ping_interval`` and drops a peer that
does not answer within the next one; under uvicorn, the server pings: run it
with ``ws_ping_interval=ping_interval, ws_ping_timeout=ping_interval`` (see
:meth:`Hub.uvicorn_options`), and the hub cuts the TCP connection its close
would leave waiting on a peer that does not read.

Socket ids are ``<worker id>#<n>.<random>``: unique across the cluster, and
:meth:`Hub.send_to` routes to the owning worker with the bus's ``send_to``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ._event import Event, Gap
from ._exceptions import BusClosed, ChannelError, CircusEventsError
from ._ws_adapters import (
    CLOSE_TIMEOUT,
    AsgiApp,
    StarletteTransport,
    Transport,
    WebsocketsTransport,
    client_js,
)
from ._ws_socket import Frame, Socket, check_hub_arguments, deliver, encode_bus_event
from .aio import AsyncBus, AsyncSubscription
from .protocol.topics import SYSTEM_PREFIX, Pattern
from .protocol.wsproto import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    DEFAULT_LIMITS,
    OPEN,
    Connection,
    FanOut,
    Limits,
    Publish,
    Subscribe,
    Unsubscribe,
    encode_event,
)

__all__ = ["DIRECT_CHANNEL", "Hub", "Limits", "client_js"]

log = logging.getLogger("circus_events.websocket")

#: The bus channel that carries ``send_to`` messages between hubs (always direct).
DIRECT_CHANNEL: Final = "circus-events.websocket.direct"
#: The server library's own frame limit, as a multiple of ``max_frame_bytes``:
#: a frame up to it gets an ``error`` frame from the hub; past it the library
#: closes the socket (1009) without reading it all into memory.
TRANSPORT_FRAME_FACTOR: Final = 4
#: Events fanned out together at most, when several wait (one write per socket
#: for all of them), and their frames' bytes at most.
FANOUT_BATCH_EVENTS: Final = 64
FANOUT_BATCH_BYTES: Final = 32 * 1024

Principal = Any
Authorize = Callable[[Any], Principal | Awaitable[Principal | None] | None]
CanSubscribe = Callable[[Principal, str], bool | Awaitable[bool]]
CanPublish = Callable[[Principal, str], bool | Awaitable[bool]]


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _deny_all(principal: Any, channel: str) -> bool:
    return False


def _allow_all(principal: Any, pattern: str) -> bool:
    return True


class Hub:
    """Relays bus events to websockets and websocket publications to the bus.

    ``authorize(websocket)`` (sync or async) returns a principal, or None to
    refuse (close 1008); default: everyone, principal None.
    ``can_subscribe(principal, pattern)``: default allows every pattern.
    ``can_publish(principal, channel)``: default refuses: browsers only listen.
    The bus must have ``echo=False`` (the default): the hub delivers its own
    worker's publications to its sockets itself.
    ``direct_writes``: write each event's pre-built frame straight to the
    sockets that have nothing queued (uvicorn's default websocket protocol and
    the ``websockets`` library); False: always through the library's ``send``.
    """

    def __init__(
        self,
        bus: AsyncBus,
        *,
        authorize: Authorize | None = None,
        can_subscribe: CanSubscribe | None = None,
        can_publish: CanPublish | None = None,
        limits: Limits = DEFAULT_LIMITS,
        direct_writes: bool = True,
    ) -> None:
        hooks = {"authorize": authorize, "can_subscribe": can_subscribe, "can_publish": can_publish}
        check_hub_arguments(bus, limits, hooks)
        self.bus = bus
        self.limits = limits
        self.direct_writes = direct_writes
        self._authorize = authorize
        self._can_subscribe = can_subscribe or _allow_all
        self._can_publish = can_publish or _deny_all
        self._fan = FanOut()
        self._sockets: dict[str, Socket] = {}
        self._readers: dict[str, tuple[AsyncSubscription, asyncio.Task[None]]] = {}
        #: pattern -> its compiled form, for the bus's gaps (which name a channel).
        self._compiled: dict[str, Pattern] = {}
        #: pattern -> drops of its shared subscription already reported as gaps.
        self._reported: dict[str, int] = {}
        #: Patterns whose bus subscription has had no event yet: the bus counts
        #: the events sent while nobody here was subscribed as an upstream gap,
        #: which no socket of this pattern lost.
        self._fresh: set[str] = set()
        # The bus's gaps reach the browsers that lost the events: the hub
        # chains itself in front of the bus's own on_gap (restored by close()).
        self._chained_on_gap = bus._core.on_gap
        bus._core.on_gap = self._bus_gap
        self._numbers = itertools.count(1)
        self._token = secrets.token_hex(3)
        self._direct: tuple[AsyncSubscription, asyncio.Task[None]] | None = None
        self._direct_numbers = itertools.count(1)
        self.closed = False
        #: The ASGI app: mount it as a websocket route (and an HTTP one for client.js).
        self.asgi = AsgiApp(self)
        #: Counters for status pages and tests.
        self.counters = {
            "accepted": 0,
            "refused": 0,
            "full": 0,
            "closed_slow": 0,
            "closed_abuse": 0,
            "events": 0,
            "frames_queued": 0,
            "frames_direct": 0,
            "dropped": 0,
            "bad_frames": 0,
            "bus_gaps": 0,
            "published": 0,
        }

    # -- public API ----------------------------------------------------------------

    def relay(self, pattern: str) -> None:
        """Every socket on this worker gets the bus events matching ``pattern``."""
        self._check_open()
        if pattern.startswith(SYSTEM_PREFIX):  # never fanned out: it would relay nothing
            raise ChannelError(f"pattern {pattern!r}: '@' channels never reach browsers")
        if self._fan.relay(pattern):
            self._open_reader(pattern)

    async def broadcast(self, channel: str, data: Any) -> None:
        """Publish ``data`` on the bus: every socket on every host that wants it gets it."""
        self._check_open()
        await self.bus.publish(channel, data)
        # The bus does not echo to its own worker: deliver to this hub's sockets too.
        await self.bus.publish(channel, data, scope="process")
        self.counters["published"] += 1

    async def send_to(self, socket_id: str, channel: str, data: Any) -> None:
        """Send to one socket, on whichever worker and host it is connected."""
        self._check_open()
        worker = socket_id.rpartition("#")[0]
        if not worker:
            raise ValueError(f"not a socket id: {socket_id!r}")
        if worker == self.bus.worker:
            self._deliver_direct(socket_id, channel, data, self.bus.worker, self.bus.host)
            return
        message = {"socket": socket_id, "channel": channel, "data": data}
        await self.bus.send_to(worker, DIRECT_CHANNEL, message)

    @property
    def socket_ids(self) -> list[str]:
        """The sockets connected to this hub."""
        return list(self._sockets)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "connections": len(self._sockets),
            "patterns": self._fan.patterns(),
        }

    def uvicorn_options(self) -> dict[str, Any]:
        """Options for ``uvicorn.run``/``uvicorn.Config`` that apply the hub's limits:
        pings (a dead peer goes within two intervals), frame size, and no
        per-message compression (it would cost CPU per socket, not per event)."""
        return {
            "ws_ping_interval": self.limits.ping_interval,
            "ws_ping_timeout": self.limits.ping_interval,
            "ws_max_size": TRANSPORT_FRAME_FACTOR * self.limits.max_frame_bytes,
            "ws_per_message_deflate": False,
        }

    def websockets_options(self) -> dict[str, Any]:
        """Options for ``websockets.serve``: frame size, no compression, the
        ``client.js`` route; the hub pings by itself."""
        return {
            "max_size": TRANSPORT_FRAME_FACTOR * self.limits.max_frame_bytes,
            "compression": None,
            "ping_interval": None,
            "process_request": self.process_request,
        }

    async def close(self) -> None:
        """Close every socket (1001) and the hub's bus subscriptions; the bus stays open."""
        if self.closed:
            return
        self.closed = True
        if self.bus._core.on_gap == self._bus_gap:
            self.bus._core.on_gap = self._chained_on_gap
        sockets = list(self._sockets.values())
        for socket in sockets:
            socket.connection.close(CLOSE_GOING_AWAY, "the server is shutting down")
        # In parallel: each close handshake may wait up to CLOSE_TIMEOUT.
        await asyncio.gather(*(self._shut(socket) for socket in sockets))
        for subscription, task in [*self._readers.values(), *filter(None, [self._direct])]:
            subscription.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._readers.clear()
        self._direct = None

    def _check_open(self) -> None:
        if self.closed:
            raise BusClosed("the hub is closed")

    # -- adapters --------------------------------------------------------------------

    async def serve(self, websocket: Any) -> None:
        """Serve one Starlette/FastAPI ``WebSocket`` until it closes."""
        await self._run(StarletteTransport(websocket), websocket)

    async def serve_websockets(self, connection: Any) -> None:
        """Handler for ``websockets.serve`` (``websockets.asyncio.server``)."""
        await self._run(WebsocketsTransport(connection), connection)

    def process_request(self, connection: Any, request: Any) -> Any:
        """``process_request`` for ``websockets.serve``: answers ``GET .../client.js``."""
        if request.path.split("?")[0].endswith("/client.js"):
            from websockets.datastructures import Headers  # noqa: PLC0415
            from websockets.http11 import Response  # noqa: PLC0415

            body = client_js()
            headers = Headers(
                [
                    ("Content-Type", "text/javascript; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                ]
            )
            return Response(200, "OK", headers, body)
        return None

    # -- one socket ------------------------------------------------------------------

    async def _run(self, transport: Transport, handle: Any) -> None:
        try:
            principal = None
            if self._authorize is not None:
                principal = await _maybe_await(self._authorize(handle))
        except Exception:
            log.exception("authorize failed: refusing the socket")
            principal = None
            refused = True
        else:
            refused = self._authorize is not None and principal is None
        if isinstance(transport, StarletteTransport):
            await transport.accept()
        if refused or self.closed:
            # Accepted then closed, so that a browser sees the code (a refused
            # handshake shows as 1006, with no reason).
            self.counters["refused"] += 1
            if refused:
                await transport.close(CLOSE_POLICY, "unauthorized")
            else:  # not final: the JS client comes back (to another worker, or later)
                await transport.close(CLOSE_GOING_AWAY, "shutting down")
            return
        if len(self._sockets) >= self.limits.max_connections:
            self.counters["full"] += 1
            await transport.close(CLOSE_TRY_AGAIN, "too many connections on this worker")
            return
        socket_id = f"{self.bus.worker}#{next(self._numbers)}.{self._token}"
        socket = Socket(Connection(socket_id, self.limits), transport, principal)
        if not self.direct_writes:
            socket.direct = None
        self._sockets[socket_id] = socket
        self.counters["accepted"] += 1
        self._ensure_direct()
        socket.writer = socket.spawn(self._write(socket))
        socket.spawn(transport.keepalive(self.limits.ping_interval, socket_id))
        socket.wake.set()  # the welcome frame
        connection = socket.connection
        try:
            while connection.state == OPEN:
                frame = await transport.receive()
                if frame is None:
                    break
                abuse = connection.abuse
                request = connection.receive(frame)
                if request is not None:
                    await self._handle(socket, request)
                # Malformed and refused frames alike.
                self.counters["bad_frames"] += connection.abuse - abuse
                socket.wake.set()
        finally:
            if connection.state != OPEN and connection.close_code == CLOSE_POLICY:
                self.counters["closed_abuse"] += 1
                # Let the writer send the last error frames and the close itself.
                await asyncio.wait([socket.writer], timeout=CLOSE_TIMEOUT)
            await self._shut(socket)

    async def _handle(self, socket: Socket, request: Subscribe | Unsubscribe | Publish) -> None:
        connection = socket.connection
        if isinstance(request, Publish):
            if not await self._check(self._can_publish, socket.principal, request.channel):
                connection.refuse(f"publishing to {request.channel!r} is not allowed")
                return
            if request.channel == DIRECT_CHANNEL:
                connection.refuse(f"{DIRECT_CHANNEL!r} is the hub's own channel")
                return
            try:
                await self.broadcast(request.channel, request.data)
            except (CircusEventsError, ValueError) as exc:
                connection.refuse(f"publish failed: {exc}")
            return
        pattern = request.pattern
        if isinstance(request, Unsubscribe):
            if connection.unsubscribed(pattern):
                socket.end_resume(pattern)
                if self._fan.remove(connection, pattern):
                    self._close_reader(pattern)
            return
        if not await self._check(self._can_subscribe, socket.principal, pattern):
            connection.refuse(f"subscribing to {pattern!r} is not allowed")
            return
        if not connection.subscribed(pattern) or connection.state != OPEN:
            return  # already subscribed: nothing to resume (the feed never stopped)
        if self._fan.add(connection, pattern):
            self._open_reader(pattern)
        if request.last_id is not None:
            socket.start_resume(self.bus, request, self.limits)

    async def _check(self, hook: Callable[[Any, str], Any], principal: Any, name: str) -> bool:
        try:
            return bool(await _maybe_await(hook(principal, name)))
        except Exception:
            log.exception("%r failed on %r: refused", hook, name)
            return False

    async def _write(self, socket: Socket) -> None:
        connection, transport, wake = socket.connection, socket.transport, socket.wake
        try:
            while connection.state == OPEN:
                await wake.wait()
                wake.clear()
                socket.busy = True
                for frame in connection.take():
                    await transport.send(frame)
                socket.busy = False
        except Exception:  # the peer went away mid-send: the reader sees it too
            return
        # Closing (too slow, abuse): what was queued before the decision still goes.
        with contextlib.suppress(Exception):
            for frame in connection.take():
                await transport.send(frame)
        await self._close_transport(socket)

    async def _close_transport(self, socket: Socket) -> None:
        connection = socket.connection
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await socket.transport.close(connection.close_code, connection.close_reason)
        except Exception:
            socket.transport.abort()

    async def _shut(self, socket: Socket) -> None:
        """Forget a socket: its subscriptions, tasks, replays; close it if still open."""
        connection = socket.connection
        if self._sockets.pop(connection.socket_id, None) is None:
            return
        for pattern in list(socket.resumes):
            socket.end_resume(pattern)
        for pattern in self._fan.remove_all(connection):
            self._close_reader(pattern)
        current = asyncio.current_task()
        for task in list(socket.tasks):
            if task is not current:
                task.cancel()
        if connection.state == OPEN:
            connection.close(1000, "")
        if connection.close_code == CLOSE_TRY_AGAIN:
            self.counters["closed_slow"] += 1
        await self._close_transport(socket)
        connection.closed()

    # -- bus side --------------------------------------------------------------------

    def _open_reader(self, pattern: str) -> None:
        subscription = self.bus.subscribe(pattern)
        self._compiled[pattern] = Pattern(pattern)
        self._fresh.add(pattern)
        task = asyncio.create_task(self._read(pattern, subscription), name=f"hub {pattern}")
        self._readers[pattern] = (subscription, task)

    def _close_reader(self, pattern: str) -> None:
        entry = self._readers.pop(pattern, None)
        self._compiled.pop(pattern, None)
        self._reported.pop(pattern, None)
        self._fresh.discard(pattern)
        if entry is not None:
            entry[0].close()
            entry[1].cancel()

    async def _read(self, pattern: str, subscription: AsyncSubscription) -> None:
        try:
            await self._fan_out(pattern, subscription)
        except Exception:  # a bug here must not pass silently: the pattern goes deaf
            log.exception("the hub's reader for %r failed", pattern)

    async def _fan_out(self, pattern: str, subscription: AsyncSubscription) -> None:
        counters, fresh = self.counters, self._fresh
        async for first in subscription:
            # The events already waiting (a backlog, or several in one bus frame)
            # go together: one write per socket for all of them.
            frames: list[Frame] = []
            size = 0
            event: Event | None = first
            while event is not None:
                # Neither a send_to for this worker nor the bus's own channels
                # (@leader.*, which "*" and "?leader.*" match too) go to browsers.
                if not event.direct and not event.channel.startswith(SYSTEM_PREFIX):
                    frame = encode_bus_event(event, pattern)
                    frames.append((str(event.id), event.channel, frame))
                    size += len(frame)
                if len(frames) >= FANOUT_BATCH_EVENTS or size >= FANOUT_BATCH_BYTES:
                    break
                event = subscription.get_nowait()
            if frames:
                counters["events"] += len(frames)
                fresh.discard(pattern)
                self._deliver(pattern, frames)
            # Let the writers run before the next events: a burst read from the bus
            # in one go would otherwise fill every queue, fast sockets' too.
            await asyncio.sleep(0)

    def _deliver(self, pattern: str, frames: list[Frame]) -> None:
        sockets = self._sockets
        if self._fan.relayed(pattern):
            targets = [s.connection for s in sockets.values()]
        else:
            targets = list(self._fan.targets(pattern))
        deliver(pattern, frames, targets, sockets, self.counters, self._kill_slow)

    def _bus_gap(self, gap: Gap) -> None:
        """The bus lost events (upstream, or a full queue of one of the hub's
        subscriptions): every socket that wanted them gets a ``gap`` frame,
        once, however many of its patterns match."""
        try:
            if not (
                self.closed
                or gap.channel == DIRECT_CHANNEL
                or gap.channel.startswith(SYSTEM_PREFIX)
            ):
                self._report_gap(gap)
        finally:
            if self._chained_on_gap is not None:
                self._chained_on_gap(gap)

    def _report_gap(self, gap: Gap) -> None:
        told: set[str] = set()
        if gap.pattern is None:  # upstream: every subscription on the channel lost them
            patterns = [
                p
                for p, c in self._compiled.items()
                if c.matches(gap.channel) and p not in self._fresh
            ]
        elif self._reader_lost(gap.pattern, gap.missed):
            patterns = [gap.pattern]  # the shared feed: every socket on it
        else:  # a resuming socket's replay (same pattern text): that socket alone
            patterns = []
            for socket in self._sockets.values():
                entry = socket.resumes.get(gap.pattern)
                if entry is not None and entry[1].dropped:
                    told.add(socket.connection.socket_id)
                    socket.gap(gap.channel, gap.missed)
        for pattern in patterns:
            if self._fan.relayed(pattern):
                targets = list(self._sockets)
            else:
                targets = [c.socket_id for c in self._fan.targets(pattern)]
            for socket_id in targets:
                target = self._sockets.get(socket_id)
                if target is not None and socket_id not in told:
                    told.add(socket_id)
                    target.gap(gap.channel, gap.missed)
        self.counters["bus_gaps"] += bool(told)

    def _reader_lost(self, pattern: str, missed: int) -> bool:
        """True if the shared subscription to ``pattern`` dropped ``missed`` events
        not yet reported (a replay's drops have the same pattern text)."""
        entry = self._readers.get(pattern)
        if entry is None:
            return False
        reported = self._reported.get(pattern, 0)
        if entry[0].dropped - reported < missed:
            return False
        self._reported[pattern] = reported + missed
        return True

    def _kill_slow(self, socket: Socket) -> None:
        """A socket past its second limit: its writer may be stuck in a send to a
        peer that does not read; cut it loose without waiting."""
        if socket.connection.socket_id in self._sockets:
            asyncio.get_running_loop().create_task(self._shut(socket))

    def _ensure_direct(self) -> None:
        if self._direct is None:
            subscription = self.bus.subscribe(DIRECT_CHANNEL)
            self._direct = (subscription, asyncio.create_task(self._read_direct(subscription)))

    async def _read_direct(self, subscription: AsyncSubscription) -> None:
        async for event in subscription:
            message = event.data
            if not event.direct or not isinstance(message, dict):
                continue
            socket_id, channel = message.get("socket"), message.get("channel")
            if isinstance(socket_id, str) and isinstance(channel, str):
                self._deliver_direct(
                    socket_id, channel, message.get("data"), event.origin, event.host, event
                )

    def _deliver_direct(
        self,
        socket_id: str,
        channel: str,
        data: Any,
        origin: str,
        host: str,
        event: Event | None = None,
    ) -> None:
        socket = self._sockets.get(socket_id)
        if socket is None:
            return
        if event is not None:
            event_id, sent = str(event.id), event.time
        else:
            event_id, sent = f"{socket_id}~direct~{next(self._direct_numbers)}", time.time()
        frame = encode_event(channel, data, event_id, origin, host, sent, direct=True)
        socket.push([frame], channel)
