"""One socket of the websocket hub: its state machine, transport, writer's
state and resumes; and the encoding of a bus event into an ``event`` frame.

The hub (``websocket.Hub``) owns the sockets and the bus subscriptions; a
:class:`Socket` owns what belongs to one browser alone, including the replay
that fills its hole when it comes back with ``last_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final

from ._event import Event
from ._exceptions import ArgumentError, BridgeError, BusClosed, CircusEventsError
from ._ws_adapters import DIRECT_HIGH_WATER, Transport
from .aio import AsyncBus, AsyncSubscription
from .protocol.topics import SYSTEM_PREFIX
from .protocol.wsframe import text_frame
from .protocol.wsproto import MAX_LAST_TIME, OPEN, Connection, Limits, Subscribe, encode_event
from .protocol.wsresume import Resume

__all__ = [
    "RESUME_SETTLE",
    "RESUME_SLACK",
    "Frame",
    "Socket",
    "check_hub_arguments",
    "deliver",
    "encode_bus_event",
]

#: One encoded event on its way to sockets: (event id, channel, frame).
Frame = tuple[str, str, str]

#: A resume replays from the ``last_time`` it is given less this many seconds:
#: the publisher's clock and Redis' stream ids may differ by that much.
RESUME_SLACK: Final = 5.0
#: A replay that stays quiet this long is complete: if ``last_id`` was not in
#: it, the socket gets a ``gap`` and what was replayed.
RESUME_SETTLE: Final = 0.5
#: A replay's queue holds ``resume_max_events`` plus this many live events,
#: in at most this many bytes or 4 send queues, whichever is more (the README's
#: limits table says so): it is read as it fills.
REPLAY_QUEUE_SLACK: Final = 10_000
REPLAY_QUEUE_BYTES: Final = 16 * 1024 * 1024


class Socket:
    """One connected socket: its state machine, transport and tasks."""

    __slots__ = (
        "busy",
        "connection",
        "direct",
        "principal",
        "resumes",
        "tasks",
        "transport",
        "wake",
        "writer",
    )

    def __init__(self, connection: Connection, transport: Transport, principal: Any) -> None:
        self.connection = connection
        self.transport = transport
        self.direct = transport.direct
        self.principal = principal
        self.wake = asyncio.Event()
        #: True while the writer task has taken frames it has not sent yet: a
        #: direct write now would overtake them.
        self.busy = False
        #: Running tasks only (each leaves when done): a socket that resumes
        #: again and again must not keep every finished replay.
        self.tasks: set[asyncio.Task[None]] = set()
        self.writer: asyncio.Task[None] | None = None
        #: pattern -> (the resume seam, its replay subscription).
        self.resumes: dict[str, tuple[Resume, AsyncSubscription]] = {}

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as one of the socket's tasks (cancelled when it goes)."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def push(self, frames: list[str], channel: str) -> None:
        for frame in frames:
            self.connection.push(frame, channel)
        self.wake.set()

    def gap(self, channel: str, missed: int | None) -> None:
        """Tell the browser that events on ``channel`` were lost on the way."""
        self.connection.push_gap(channel, missed)
        self.wake.set()

    # -- resume ----------------------------------------------------------------------

    def start_resume(self, bus: AsyncBus, request: Subscribe, limits: Limits) -> None:
        """Replay what the socket missed after ``request.last_id``, then join the live feed."""
        assert request.last_id is not None
        since = None
        if request.last_time is not None and 0 <= request.last_time <= MAX_LAST_TIME:
            since = max(0.0, request.last_time - RESUME_SLACK)  # in range: cannot raise
        resume = Resume(request.pattern, request.last_id, limits.queue_bytes)
        # Made right after the shared subscription exists, before any await: the
        # replay's live part and the shared feed start at the same event.
        # Its queue holds a whole replay: a replay that drops leaves a hole.
        replay = bus.subscribe(
            request.pattern,
            history=limits.resume_max_events,
            since=since,
            queue_size=limits.resume_max_events + REPLAY_QUEUE_SLACK,
            queue_max_bytes=max(limits.queue_bytes * 4, REPLAY_QUEUE_BYTES),
        )
        self.resumes[request.pattern] = (resume, replay)
        self.spawn(self._replay(resume, replay))

    async def _replay(self, resume: Resume, replay: AsyncSubscription) -> None:
        pattern = resume.pattern
        while not resume.done:
            try:
                event = await replay.get(timeout=RESUME_SETTLE)
            except TimeoutError:
                self.push(resume.settle(), pattern)
                continue
            except (BridgeError, BusClosed):  # pub/sub mode, Redis away: no history
                self.push(resume.failed(), pattern)
                break
            if event.channel.startswith(SYSTEM_PREFIX):  # the bus's own: never to browsers
                continue
            self.push(
                resume.replayed(str(event.id), encode_bus_event(event, pattern)), event.channel
            )
        self.end_resume(pattern, resume)

    def end_resume(self, pattern: str, resume: Resume | None = None) -> None:
        """Stop ``pattern``'s resume (only if it is ``resume``, when given: an
        old replay ending must not end the one a new subscribe started)."""
        entry = self.resumes.get(pattern)
        if entry is None or (resume is not None and entry[0] is not resume):
            return
        del self.resumes[pattern]
        entry[0].cancel()  # its replay task stops, without a gap
        entry[1].close()


def encode_bus_event(event: Event, pattern: str) -> str:
    """The ``event`` frame for a bus event, encoded once for every socket."""
    try:
        data = event.data
    except CircusEventsError:
        data = None  # undecodable payload: the event still counts
    return encode_event(
        event.channel, data, str(event.id), event.origin, event.host, event.time, pattern=pattern
    )


def deliver(
    pattern: str,
    frames: list[Frame],
    targets: Iterable[Connection],
    sockets: dict[str, Socket],
    counters: dict[str, int],
    kill_slow: Callable[[Socket], None],
) -> None:
    """Give ``frames`` (consecutive events) to every target socket on ``pattern``:
    written at once when nothing waits for it, else queued behind what does."""
    wire: bytes | None = None  # the frames' bytes, built for the first direct write
    direct_writes = 0
    for connection in targets:
        socket = sockets.get(connection.socket_id)
        if socket is None:
            continue
        resume = socket.resumes.get(pattern)
        if resume is not None:
            for event_id, channel, frame in frames:
                socket.push(resume[0].live(event_id, frame), channel)
            if resume[0].done:
                socket.end_resume(pattern, resume[0])
            continue
        direct = socket.direct
        if direct is not None and not socket.busy and not connection.pending:
            # Nothing waits for this socket: the shared bytes go out now, without
            # a queue, a task switch or a framing per socket (DirectWriter.ready,
            # inlined: this runs per socket per event).
            transport, is_open = direct.transport, direct.is_open
            if (
                connection.state == OPEN
                and not transport.is_closing()
                and transport.get_write_buffer_size() <= DIRECT_HIGH_WATER
                and (is_open is None or is_open())
            ):
                if wire is None:
                    wire = b"".join([text_frame(frame) for _, _, frame in frames])
                transport.write(wire)
                connection.sent += len(frames)
                direct_writes += len(frames)
                continue
        for _, channel, frame in frames:
            if connection.push(frame, channel):
                counters["frames_queued"] += 1
                continue
            counters["dropped"] += 1
            if connection.state != OPEN:
                kill_slow(socket)
                break
        socket.wake.set()  # the writer sends, or closes it (or is cancelled by the hub)
    counters["frames_direct"] += direct_writes


def check_hub_arguments(bus: object, limits: object, hooks: Mapping[str, object]) -> None:
    """``Hub(...)``'s arguments, checked when it is made, not when a browser comes."""
    if not isinstance(bus, AsyncBus):
        raise ArgumentError("bus", f"must be an AsyncBus, not {type(bus).__name__}")
    if not isinstance(limits, Limits):
        raise ArgumentError("limits", f"must be a Limits, not {type(limits).__name__}")
    for name, hook in hooks.items():
        if hook is not None and not callable(hook):
            raise ArgumentError(name, f"must be a function or None, not {hook!r}")
