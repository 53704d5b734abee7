"""The websocket hub's sans-IO core: browser frames, per-socket queues, fan-out tables.

Theory of operation
-------------------
A :class:`Connection` is one browser socket as a state machine. Text frames
from the browser go in (:meth:`Connection.receive`), requests come out
(:class:`Subscribe`, :class:`Unsubscribe`, :class:`Publish`) for the I/O
layer to check against its hooks and answer (:meth:`Connection.subscribed`,
:meth:`Connection.refuse`). Server frames go out of a send queue
(:meth:`Connection.take`), already encoded: every event is encoded to JSON
once by :func:`encode_event` and the same string is queued on every socket
that wants it.

::

    OPEN --receive/push/take--> OPEN
      |  abuse > max_abuse (1008), dropped > queue_close_bytes (1013), close()
      v
    CLOSING(code, reason) --closed()--> CLOSED

Nothing here can raise on browser input: a malformed, oversized or refused
frame queues an ``error`` frame and counts one abuse; past ``max_abuse`` of
them the connection moves to CLOSING with code 1008 (policy violation).

The send queue is bounded in bytes (``queue_bytes``). An event that does not
fit is dropped and counted per channel; when the queue has room again, one
``gap`` frame per channel says how many were lost, ahead of any later event,
so the browser sees the hole where it happened. A socket that keeps losing
(more than ``queue_close_bytes`` dropped without ever catching up) is moved
to CLOSING with code 1013 (try again later): it never slows the others,
because pushing onto a queue never waits.

:class:`FanOut` holds which connections want which pattern, with one
reference per (connection, pattern) and one for the hub's own ``relay``: the
I/O layer opens one bus subscription when a pattern's count goes from 0 to
1 and closes it when it comes back to 0, however many sockets share it.

:class:`Resume` (in :mod:`.wsresume`) joins a socket's replay to the live feed.

No socket, clock or asyncio here: times and ids come in as arguments.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from .._exceptions import ArgumentError, ChannelError
from .topics import Pattern, validate_channel

__all__ = [
    "CLOSE_ABUSE",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY",
    "CLOSE_TRY_AGAIN",
    "DEFAULT_LIMITS",
    "MAX_LAST_TIME",
    "Connection",
    "FanOut",
    "Limits",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "encode_error",
    "encode_event",
    "encode_gap",
    "encode_welcome",
]

#: Close code for a refused ``authorize`` (RFC 6455: policy violation).
CLOSE_POLICY: Final = 1008
#: Close code after repeated malformed or refused frames (also a policy violation).
CLOSE_ABUSE: Final = 1008
#: Close code for a socket that fell too far behind (RFC 6455: try again later).
CLOSE_TRY_AGAIN: Final = 1013
#: Close code when the hub shuts down (its sockets, and any that come after).
#: A full worker closes with CLOSE_TRY_AGAIN (1013).
CLOSE_GOING_AWAY: Final = 1001

#: Largest frame a browser may send, in bytes (a subscribe or a publish with its data).
MAX_FRAME_BYTES: Final = 64 * 1024
#: Patterns one socket may subscribe to at once.
MAX_SUBSCRIPTIONS: Final = 100
#: Bad frames (malformed, oversized, refused) a socket may send before it is closed (1008).
MAX_ABUSE: Final = 20
#: Bytes of frames waiting to go to one socket; past it events are dropped and
#: reported by a ``gap`` frame. 1 MiB: 10,000 idle sockets cost nothing, 1,000
#: stuck ones at most 1 GiB.
QUEUE_BYTES: Final = 1024 * 1024
#: Bytes dropped for one socket without it catching up before it is closed (1013).
QUEUE_CLOSE_BYTES: Final = 4 * 1024 * 1024
#: Connections one worker accepts at once; more are closed with 1013.
MAX_CONNECTIONS: Final = 10_000
#: Seconds between pings; a peer that does not answer within the next
#: interval is dropped, so a dead one goes within two intervals.
PING_INTERVAL: Final = 20.0
#: Replayed events one resume asks for at most (newest first); more missed: a gap.
RESUME_MAX_EVENTS: Final = 10_000
#: Largest ``last_time`` a browser may send (Unix seconds, the year 5138): a
#: bound that keeps it a float and in milliseconds an int Redis takes.
MAX_LAST_TIME: Final = 1e11


@dataclass(frozen=True, slots=True)
class Limits:
    """The hub's limits; the defaults are the module's constants."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_subscriptions: int = MAX_SUBSCRIPTIONS
    max_abuse: int = MAX_ABUSE
    queue_bytes: int = QUEUE_BYTES
    queue_close_bytes: int = QUEUE_CLOSE_BYTES
    max_connections: int = MAX_CONNECTIONS
    ping_interval: float = PING_INTERVAL
    resume_max_events: int = RESUME_MAX_EVENTS

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "max_subscriptions",
            "max_abuse",
            "queue_bytes",
            "queue_close_bytes",
            "max_connections",
            "resume_max_events",
        ):
            value = getattr(self, name)
            least = 0 if name == "max_abuse" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ArgumentError(
                    name, f"must be a whole number of at least {least}, not {value!r}"
                )
        ping = self.ping_interval
        if isinstance(ping, bool) or not isinstance(ping, int | float) or not 0 < ping < math.inf:
            raise ArgumentError(
                "ping_interval", f"must be a number of seconds over 0, not {ping!r}"
            )


DEFAULT_LIMITS: Final = Limits()


# -- requests from the browser ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    """The browser asks for a pattern's events, after ``last_id`` when it resumes."""

    pattern: str
    last_id: str | None = None
    #: The ``time`` of the ``last_id`` event (the JS client sends it): where to replay from.
    last_time: float | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    pattern: str


@dataclass(frozen=True, slots=True)
class Publish:
    channel: str
    data: Any


Request = Subscribe | Unsubscribe | Publish


# -- server frames -------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # ASCII only: the string's length is its size in bytes on the wire. No NaN:
    # browsers' JSON.parse refuses it.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_welcome(socket_id: str) -> str:
    return _dumps({"type": "welcome", "socket_id": socket_id})


def encode_error(message: str) -> str:
    return _dumps({"type": "error", "message": message})


def encode_gap(channel: str, missed: int | None) -> str:
    """``missed`` None: an unknown number (a resume that could not be filled)."""
    return _dumps({"type": "gap", "channel": channel, "missed": missed})


def encode_event(
    channel: str,
    data: Any,
    id: str,
    origin: str,
    host: str,
    time: float,
    *,
    pattern: str | None = None,
    direct: bool = False,
) -> str:
    """One event frame, encoded once for every socket. Data JSON cannot hold
    (bytes of the raw codec, ...) travels as its ``repr``. ``pattern``: the
    subscription it answers (a socket with overlapping patterns gets one frame
    per pattern, as Redis PSUBSCRIBE does, and can tell them apart)."""
    frame = {
        "type": "event",
        "channel": channel,
        "data": data,
        "id": id,
        "origin": origin,
        "host": host,
        "time": time,
    }
    if pattern is not None:
        frame["pattern"] = pattern
    if direct:
        frame["direct"] = True
    try:
        return _dumps(frame)
    except (TypeError, ValueError):
        frame["data"] = repr(data)
        return _dumps(frame)


# -- one socket ----------------------------------------------------------------------

OPEN: Final = "OPEN"
CLOSING: Final = "CLOSING"
CLOSED: Final = "CLOSED"


class Connection:
    """One browser socket: parses its frames, queues what goes to it."""

    __slots__ = (
        "_gaps",
        "_queue",
        "abuse",
        "close_code",
        "close_reason",
        "dropped",
        "dropped_bytes",
        "limits",
        "queued_bytes",
        "sent",
        "socket_id",
        "state",
        "subscriptions",
    )

    def __init__(self, socket_id: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.socket_id = socket_id
        self.limits = limits
        self.state = OPEN
        self.close_code = 0
        self.close_reason = ""
        #: Patterns this socket subscribed to (granted by the hub).
        self.subscriptions: set[str] = set()
        self._queue: deque[str] = deque()
        self.queued_bytes = 0
        #: channel -> events dropped since the last gap frame for it.
        self._gaps: dict[str, int] = {}
        self.dropped_bytes = 0
        #: Counters: events dropped in all, frames taken to send, bad frames.
        self.dropped = 0
        self.sent = 0
        self.abuse = 0
        self._queue.append(encode_welcome(socket_id))
        self.queued_bytes = len(self._queue[0])

    # -- browser -> server

    def receive(self, frame: str | bytes) -> Request | None:
        """Parse one frame from the browser: a request, or None (an error frame is queued)."""
        if self.state != OPEN:
            return None
        size = len(frame)
        if isinstance(frame, str) and size * 4 > self.limits.max_frame_bytes:
            size = len(frame.encode("utf-8", "surrogatepass"))  # exact only near the limit
        if size > self.limits.max_frame_bytes:
            self.refuse(f"frame too large: {size} bytes, at most {self.limits.max_frame_bytes}")
            return None
        if isinstance(frame, bytes):
            self.refuse("binary frames are not accepted: send JSON text")
            return None
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):
            self.refuse("not JSON")
            return None
        if not isinstance(message, dict):
            self.refuse("a frame must be a JSON object with a 'type'")
            return None
        kind = message.get("type")
        if kind == "subscribe":
            return self._subscribe(message)
        if kind == "unsubscribe":
            pattern = message.get("pattern")
            if not isinstance(pattern, str):
                self.refuse("unsubscribe: 'pattern' must be a string")
                return None
            return Unsubscribe(pattern)
        if kind == "publish":
            channel = message.get("channel")
            if not isinstance(channel, str) or "data" not in message:
                self.refuse("publish: needs 'channel' (a string) and 'data'")
                return None
            try:
                validate_channel(channel)
            except ChannelError as exc:
                self.refuse(f"publish: {exc}")
                return None
            return Publish(channel, message["data"])
        self.refuse(f"unknown frame type {str(kind)[:40]!r}: subscribe, unsubscribe or publish")
        return None

    def _subscribe(self, message: dict[str, Any]) -> Subscribe | None:
        pattern = message.get("pattern")
        last_id = message.get("last_id")
        last_time = message.get("last_time")
        if not isinstance(pattern, str):
            self.refuse("subscribe: 'pattern' must be a string")
            return None
        if last_id is not None and not isinstance(last_id, str):
            self.refuse("subscribe: 'last_id' must be a string")
            return None
        if last_time is not None and (
            isinstance(last_time, bool)
            or not isinstance(last_time, int | float)
            or not 0 <= last_time <= MAX_LAST_TIME  # also NaN; ints of any size compare
        ):
            self.refuse(f"subscribe: 'last_time' must be a Unix time from 0 to {MAX_LAST_TIME:g}")
            return None
        try:
            Pattern(pattern)
            if pattern.startswith("@"):  # workers may follow @leader.*; browsers may not
                raise ChannelError(f"pattern {pattern!r}: names starting with '@' are reserved")
        except ChannelError as exc:
            self.refuse(f"subscribe: {exc}")
            return None
        if pattern not in self.subscriptions and (
            len(self.subscriptions) >= self.limits.max_subscriptions
        ):
            self.refuse(
                f"subscribe: at most {self.limits.max_subscriptions} subscriptions per socket"
            )
            return None
        return Subscribe(pattern, last_id, None if last_time is None else float(last_time))

    def refuse(self, message: str) -> None:
        """Answer a bad or forbidden frame with an error; close after too many."""
        self.abuse += 1
        self._put(encode_error(message))
        if self.abuse > self.limits.max_abuse:
            self.close(CLOSE_ABUSE, "too many bad frames")

    def subscribed(self, pattern: str) -> bool:
        """Record a granted subscription; True if it is new for this socket."""
        if pattern in self.subscriptions:
            return False
        self.subscriptions.add(pattern)
        return True

    def unsubscribed(self, pattern: str) -> bool:
        """Forget a subscription; True if the socket had it."""
        if pattern not in self.subscriptions:
            return False
        self.subscriptions.discard(pattern)
        return True

    # -- server -> browser

    def push(self, frame: str, channel: str) -> bool:
        """Queue an encoded event (never waits); False if it was dropped."""
        if self.state != OPEN:
            return False
        size = len(frame)
        if self._gaps:
            self._flush_gaps()
        if self.queued_bytes + size > self.limits.queue_bytes and self._queue:
            self.dropped += 1
            self.dropped_bytes += size
            self._gaps[channel] = self._gaps.get(channel, 0) + 1
            if self.dropped_bytes > self.limits.queue_close_bytes:
                self.close(CLOSE_TRY_AGAIN, "too slow: the send queue overflowed")
            return False
        self._queue.append(frame)
        self.queued_bytes += size
        return True

    def push_gap(self, channel: str, missed: int | None) -> None:
        """Queue a gap frame (the bus reported a loss, or a resume left a hole)."""
        self._put(encode_gap(channel, missed))

    def _put(self, frame: str) -> None:
        """Queue a control frame (error, gap): small, never dropped."""
        if self.state == OPEN:
            self._queue.append(frame)
            self.queued_bytes += len(frame)

    def _flush_gaps(self) -> None:
        """Report drops once the queue has room again (at most half full)."""
        if self.queued_bytes * 2 > self.limits.queue_bytes:
            return
        for channel, missed in self._gaps.items():
            self._put(encode_gap(channel, missed))
        self._gaps.clear()
        self.dropped_bytes = 0

    @property
    def pending(self) -> bool:
        """True when frames wait to be sent."""
        return bool(self._queue) or bool(self._gaps)

    def take(self) -> list[str]:
        """Everything queued, in order, to send now (the queue is then empty)."""
        frames = list(self._queue)
        self._queue.clear()
        self.queued_bytes = 0
        if self._gaps:  # the drops came after everything that was queued
            frames += [encode_gap(channel, missed) for channel, missed in self._gaps.items()]
            self._gaps.clear()
            self.dropped_bytes = 0
        self.sent += len(frames)
        return frames

    def close(self, code: int, reason: str) -> None:
        """Start closing (the first reason wins); nothing more is queued."""
        if self.state == OPEN:
            self.state = CLOSING
            self.close_code = code
            self.close_reason = reason

    def closed(self) -> None:
        """The socket is gone."""
        self.state = CLOSED
        self._queue.clear()
        self.queued_bytes = 0


# -- the hub's table -----------------------------------------------------------------


class FanOut:
    """Which connections want which pattern; one bus subscription per pattern.

    :meth:`add`, :meth:`remove` and :meth:`relay` return True when the bus
    subscription for the pattern must be opened (first reference) or closed
    (last reference gone).
    """

    __slots__ = ("_by_pattern", "_relayed")

    def __init__(self) -> None:
        self._by_pattern: dict[str, dict[str, Connection]] = {}
        self._relayed: set[str] = set()

    def _count(self, pattern: str) -> int:
        return len(self._by_pattern.get(pattern, ())) + (pattern in self._relayed)

    def add(self, connection: Connection, pattern: str) -> bool:
        opened = self._count(pattern) == 0
        self._by_pattern.setdefault(pattern, {})[connection.socket_id] = connection
        return opened

    def remove(self, connection: Connection, pattern: str) -> bool:
        members = self._by_pattern.get(pattern)
        if members is None or members.pop(connection.socket_id, None) is None:
            return False
        if not members:
            del self._by_pattern[pattern]
        return self._count(pattern) == 0

    def remove_all(self, connection: Connection) -> list[str]:
        """Forget a connection; the patterns whose bus subscription must close."""
        return [p for p in sorted(connection.subscriptions) if self.remove(connection, p)]

    def relay(self, pattern: str) -> bool:
        """The hub's own reference: every connection gets this pattern's events."""
        opened = self._count(pattern) == 0
        self._relayed.add(pattern)
        return opened

    def unrelay(self, pattern: str) -> bool:
        if pattern not in self._relayed:
            return False
        self._relayed.discard(pattern)
        return self._count(pattern) == 0

    def relayed(self, pattern: str) -> bool:
        return pattern in self._relayed

    def targets(self, pattern: str) -> Iterable[Connection]:
        """The connections subscribed to ``pattern`` (not the relay's: the I/O layer
        knows all its connections)."""
        return self._by_pattern.get(pattern, {}).values()

    def patterns(self) -> list[str]:
        """Every pattern with a reference (for tests and status)."""
        return sorted(set(self._by_pattern) | self._relayed)

    def count(self, pattern: str) -> int:
        return self._count(pattern)
