"""Where a subscriber's events go, and how much its queue may take (pure)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from .._event import GAP_QUEUE_FULL, Event, Gap, GapReason
from ..protocol import Pattern
from .limits import EVENT_OVERHEAD_BYTES

__all__ = ["DropLedger", "Failure", "HistoryLoad", "QueueBound", "Subscriber"]


class Subscriber:
    """One registered interest: a pattern, where its events go, and an optional
    ``wake`` called once after each batch that gave it events.

    ``sink_many(events, nbytes)`` takes the events of one frame at once
    (cheaper than one ``sink`` call each), ``nbytes`` being the frame's size;
    a subscription's never waits: past its :class:`QueueBound` it drops.
    Without it (a handler), ``sink`` gets the events one by one.
    """

    __slots__ = ("bound", "fail", "history", "pattern", "sink", "sink_many", "wake")

    def __init__(
        self,
        pattern: Pattern,
        sink: Callable[[Event], Any],
        wake: Callable[[], None] | None = None,
        fail: Callable[[Exception], None] | None = None,
        sink_many: Callable[[list[Event], int], None] | None = None,
        bound: QueueBound | None = None,
    ) -> None:
        self.pattern = pattern
        self.sink = sink
        self.wake = wake
        self.fail = fail
        self.sink_many = sink_many
        #: A subscription's queue bound: it also bounds live events held
        #: while history loads. None for a handler (DEFAULT_QUEUE_SIZE then).
        self.bound = bound
        #: While its history loads, live events wait here instead of the sink.
        self.history: HistoryLoad | None = None


class DropLedger:
    """Events this worker dropped, per (origin, host, channel), until the bus
    reports them (:meth:`BusCore.report_drops`): one :class:`Gap` each, with
    ``pattern`` and ``reason``; the sum of ``missed`` is what was lost."""

    __slots__ = ("_pending", "_report_to", "dropped", "pattern", "reason")

    def __init__(self, pattern: str | None, reason: GapReason, report_to: list[DropLedger]) -> None:
        self.pattern = pattern
        self.reason = reason
        #: Events dropped, ever.
        self.dropped = 0
        self._report_to = report_to
        #: Drops not reported yet: (origin, host, channel) -> [missed, last seq].
        self._pending: dict[tuple[str, str, str], list[int]] = {}

    def drop(self, last: Event, count: int) -> None:
        """``count`` events of ``last``'s frame, up to ``last``, were dropped."""
        self.dropped += count
        key = (last.origin, last.host, last.channel)
        pending = self._pending
        entry = pending.get(key)
        if entry is None:
            if not pending:
                self._report_to.append(self)
            pending[key] = [count, last.seq]
        else:
            entry[0] += count
            entry[1] = last.seq

    def take_gaps(self) -> list[Gap]:
        """The drops since the last call, one gap per (origin, host, channel)."""
        gaps = [
            Gap(origin, host, channel, missed, seq, self.pattern, self.reason)
            for (origin, host, channel), (missed, seq) in self._pending.items()
        ]
        self._pending = {}
        return gaps


class QueueBound(DropLedger):
    """How much one subscription's queue may take, and the exact count of what
    it dropped.

    Theory of operation: the queue itself (a deque, an ``asyncio.Queue``)
    belongs to the client. Whoever fills it (one party at a time: the thread
    holding the sockets, or the event loop) asks :meth:`admit` how many of a
    frame's events fit, appends that many, and hands the rest to
    :meth:`drop`. Readers only pop: what they took is worked out from the
    queue's length (events appended so far less events still queued), so
    ``get()`` does no accounting, and two reading threads cannot make the
    counts drift. Bytes are known per frame, not per event: a frame still
    partly queued counts whole, so the byte count errs high by at most one
    frame. Drops are kept per (origin, host, channel) until the bus reports
    them (:meth:`BusCore.report_drops`), one :class:`Gap` each, with this
    subscription's pattern: the sum of ``missed`` is what it lost.
    """

    __slots__ = (
        "_appended",
        "_bytes_in",
        "_floor",
        "_marks",
        "max_bytes",
        "max_events",
        "per_event",
    )

    def __init__(
        self,
        pattern: str,
        max_events: int,
        max_bytes: int,
        report_to: list[DropLedger],
        per_event: int = EVENT_OVERHEAD_BYTES,
    ) -> None:
        super().__init__(pattern, GAP_QUEUE_FULL, report_to)
        self.max_events = max_events
        self.max_bytes = max_bytes
        #: Bytes an event costs besides the frame bytes it came with.
        self.per_event = per_event
        self._appended = 0
        self._bytes_in = 0
        #: Bytes of the frames known to be taken out of the queue.
        self._floor = 0
        #: (events appended, bytes appended) after each frame still (partly) queued.
        self._marks: collections.deque[tuple[int, int]] = collections.deque()

    def queued_bytes(self, queued: int) -> int:
        """Bytes in a queue holding ``queued`` items (at most one frame too many)."""
        consumed = self._appended - queued
        marks = self._marks
        while marks and marks[0][0] <= consumed:
            self._floor = marks.popleft()[1]
        return self._bytes_in - self._floor

    def admit(self, count: int, nbytes: int, queued: int) -> int:
        """How many of a frame's ``count`` events (``nbytes`` in all, to which
        ``per_event`` is added for each) go into a
        queue holding ``queued`` items now: all of them, unless the queue is
        full. The caller appends that many, from the first, and passes the
        rest to :meth:`drop`."""
        # The common case inline (once per frame on the receive path: calls
        # to queued_bytes and _record cost a tenth of a one-message frame).
        nbytes += count * self.per_event
        marks = self._marks
        appended = self._appended
        consumed = appended - queued
        while marks and marks[0][0] <= consumed:
            self._floor = marks.popleft()[1]
        bytes_in = self._bytes_in + nbytes
        if queued + count <= self.max_events and bytes_in - self._floor <= self.max_bytes:
            self._appended = appended = appended + count
            self._bytes_in = bytes_in
            marks.append((appended, bytes_in))
            return count
        room = self.max_events - queued
        if room <= 0:
            return 0
        room_bytes = self.max_bytes - (self._bytes_in - self._floor)
        # Bytes per event as the frame's average: a batch's events are alike.
        take = min(count, room, max(room_bytes, 0) * count // nbytes if nbytes else count)
        if take == 0 and queued == 0:
            take = 1  # an empty queue takes one event, however large
        if take:
            self._record(take, -(-nbytes * take // count))
        return take

    def _record(self, count: int, nbytes: int) -> None:
        self._appended += count
        self._bytes_in += nbytes
        self._marks.append((self._appended, self._bytes_in))


class Failure:
    """An error a subscription's reader gets once, in order (a failed history load)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class HistoryLoad:
    """One ``subscribe(..., history=N)`` in progress.

    The subscription is live before the request is sent (it goes up the same
    pipe, after the subscription), so live events that arrive meanwhile are
    held; at the end, history comes first, then the held events that history
    did not already contain: no duplicate and no hole at the seam.
    """

    __slots__ = (
        "asked_at",
        "error",
        "heard",
        "held",
        "held_bytes",
        "limit",
        "replays",
        "since_ms",
        "started",
        "subscriber",
        "token",
    )

    def __init__(
        self,
        subscriber: Subscriber,
        token: bytes,
        limit: int | None,
        since_ms: int | None,
        now: float,
    ) -> None:
        self.subscriber = subscriber
        self.token = token
        self.limit = limit
        self.since_ms = since_ms
        self.replays: dict[tuple[str, int, str, int], Event] = {}
        self.held: list[Event] = []
        #: Payload bytes in ``held``.
        self.held_bytes = 0
        self.asked_at = 0.0
        #: When it was asked for (monotonic), and whether the bridge answered
        #: since the last look (then it is not asked again yet).
        self.started = now
        self.heard = False
        self.error: Exception | None = None
