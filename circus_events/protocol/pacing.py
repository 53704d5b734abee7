"""Backpressure from live local subscribers to local publishers, as bookkeeping.

Theory of operation
-------------------
XPUB never slows a publisher down for a subscriber: past its high-water mark
a subscriber loses. So a healthy subscriber that only reads slower than the
publishers write (joining 512 KiB messages from pieces, say) loses too. To
spare it, the bridge counts the bytes it hands its XPUB socket (its
``clock``) and, every ``mark_every`` bytes, sends a marker carrying the
clock on :data:`PACE_TOPIC`, which every client subscribes to. A marker
queues behind everything sent before it, so a client that reads it has read
everything before it: it sends the clock back up its subscription socket
(:data:`PACE_ACK`). ``clock - acked`` is then at least what that socket has
not read yet (more for a socket that subscribes to little: it reads its
markers at once, so its figure stays small).

While some live subscriber is more than ``pace_bytes`` behind, the bridge
stops reading its PULL socket: publishers' pipes fill and ``publish`` waits.
It reads again once every live subscriber is within half of that. A
subscriber that acknowledges nothing new for ``stall_timeout`` while a
marker older than that waits for it is stuck: it paces nobody, loses at its
high-water mark as before and is told its exact loss by sequence gaps; it
paces again once it acknowledges. Frames from other hosts count in the
clock but cannot be held back.

Acks travel up the subscription socket, not the PUSH socket: the bridge
keeps reading that one while it holds publishers back.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from .._exceptions import ProtocolError

__all__ = [
    "MAX_PACED_PEERS",
    "PACE_ACK",
    "PACE_MARK",
    "PACE_TOPIC",
    "PaceTable",
    "build_pace_ack",
    "build_pace_marker",
    "parse_pace_ack",
    "parse_pace_marker",
]

#: The topic markers travel on (exact: a channel name no client may publish on).
PACE_TOPIC: Final = b"@pace\0"
#: The byte after the topic's NUL in a marker (a frame has its version, 1, there).
PACE_MARK: Final = 0xC2
#: First byte of an ack a client sends up its subscription socket (0 and 1
#: are unsubscribe and subscribe, 2-4 requests): ``PACE_ACK clock(u64) key``.
PACE_ACK: Final = b"\x05"
#: Subscriber sockets the bridge tracks at most (each a few hundred bytes);
#: past it, peers silent for ``forget_after`` make room, else new ones go
#: unpaced (as every subscriber was before pacing).
MAX_PACED_PEERS: Final = 10_000
#: Fewest bytes between markers, whatever the threshold: a marker per frame
#: would cost the hot path more than pacing saves.
MIN_MARK_EVERY: Final = 64 * 1024
#: Longest key an ack may carry (a worker id of 200 bytes and a socket number).
MAX_PACE_KEY: Final = 256
_CLOCK: Final = struct.Struct("<Q")
_MARKER_HEAD: Final = PACE_TOPIC + bytes([PACE_MARK])
_MARKER_SIZE: Final = len(_MARKER_HEAD) + _CLOCK.size


def build_pace_marker(clock: int) -> bytes:
    """The marker frame the bridge sends its subscribers at ``clock``."""
    return _MARKER_HEAD + _CLOCK.pack(clock)


def parse_pace_marker(frame: bytes) -> int | None:
    """The clock a marker carries, or None if ``frame`` is not a marker."""
    if len(frame) != _MARKER_SIZE or not frame.startswith(_MARKER_HEAD):
        return None
    clock: int = _CLOCK.unpack_from(frame, len(_MARKER_HEAD))[0]
    return clock


def build_pace_ack(clock: int, key: bytes) -> bytes:
    """What a client sends up after reading the marker of ``clock``; ``key``
    tells its socket apart from the others (its worker id and a number)."""
    return PACE_ACK + _CLOCK.pack(clock) + key


def parse_pace_ack(frame: bytes) -> tuple[int, bytes]:
    """The clock and key of an ack (ProtocolError if malformed)."""
    head = len(PACE_ACK) + _CLOCK.size
    if not frame.startswith(PACE_ACK) or not head < len(frame) <= head + MAX_PACE_KEY:
        raise ProtocolError(f"a pace ack of {len(frame)} bytes")
    clock: int = _CLOCK.unpack_from(frame, len(PACE_ACK))[0]
    return clock, frame[head:]


class _Peer:
    """One subscriber socket: the newest clock it acknowledged, and when it last
    acknowledged something new (``progress_at``) or anything (``heard_at``)."""

    __slots__ = ("acked", "heard_at", "progress_at")

    def __init__(self, acked: int, now: float) -> None:
        self.acked = acked
        self.progress_at = now
        self.heard_at = now


class PaceTable:
    """The bridge's view of how far behind each pacing subscriber is.

    ``clock`` is bytes sent to subscribers so far (the bridge adds to it);
    when it reaches ``next_mark`` the bridge sends :meth:`mark`'s frame and
    asks :meth:`evaluate` whether to hold publishers back. Times are
    monotonic seconds, given by the caller.
    """

    def __init__(
        self,
        pace_bytes: int,
        stall_timeout: float,
        *,
        max_peers: int = MAX_PACED_PEERS,
        forget_after: float = 60.0,
    ) -> None:
        self.pace_bytes = pace_bytes
        self.stall_timeout = stall_timeout
        self.max_peers = max_peers
        self.forget_after = forget_after
        #: Markers every eighth of the threshold: a subscriber's figure is
        #: never more than that above what it has really not read.
        self.mark_every = max(pace_bytes // 8, MIN_MARK_EVERY)
        self.clock = 0
        self.next_mark = self.mark_every
        #: True while publishers are held back.
        self.paused = False
        #: Times publishers were held back, subscribers found stuck, acks ignored.
        self.pauses = 0
        self.stalls = 0
        self.ignored = 0
        self._peers: dict[bytes, _Peer] = {}
        self._stuck: set[bytes] = set()
        #: (sent_at, clock) of the markers sent within the last stall_timeout,
        #: and of the newest one before that (first).
        self._marks: deque[tuple[float, int]] = deque()

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def stuck(self) -> int:
        """Subscribers found stuck at the last evaluation."""
        return len(self._stuck)

    def mark(self, now: float) -> bytes:
        """Record a marker sent now at the current clock; the frame to send."""
        self._marks.append((now, self.clock))
        self.next_mark = self.clock + self.mark_every
        return build_pace_marker(self.clock)

    def ack(self, frame: bytes, now: float) -> None:
        """Take a subscriber's ack (ProtocolError if malformed)."""
        clock, key = parse_pace_ack(frame)
        clock = min(clock, self.clock)  # no socket has read what was never sent
        peer = self._peers.get(key)
        if peer is None:
            if len(self._peers) >= self.max_peers and not self._forget(now):
                self.ignored += 1
                return
            self._peers[key] = _Peer(clock, now)
            return
        peer.heard_at = now
        if clock > peer.acked:
            peer.acked = clock
            peer.progress_at = now

    def evaluate(self, now: float) -> bool:
        """Whether publishers must be held back now (also :attr:`paused`).

        Held back while a subscriber that is not stuck is more than
        ``pace_bytes`` behind; let go once all are within half of that.
        """
        self._forget(now)
        stale = self._stale_clock(now)
        limit = self.pace_bytes // 2 if self.paused else self.pace_bytes
        behind_from = self.clock - limit  # an ack below this is too far behind
        since = now - self.stall_timeout
        hold = False
        for key, peer in self._peers.items():
            if peer.acked >= behind_from and peer.acked >= stale:
                self._stuck.discard(key)
            elif peer.progress_at < since and peer.acked < stale:
                if key not in self._stuck:
                    self._stuck.add(key)
                    self.stalls += 1
            else:
                self._stuck.discard(key)
                hold = hold or peer.acked < behind_from
        if hold and not self.paused:
            self.pauses += 1
        self.paused = hold
        return hold

    def _stale_clock(self, now: float) -> int:
        """The clock of the newest marker sent more than stall_timeout ago (-1: none):
        a subscriber that has not acknowledged it may be stuck."""
        marks = self._marks
        since = now - self.stall_timeout
        while len(marks) > 1 and marks[1][0] <= since:
            marks.popleft()
        if marks and marks[0][0] <= since:
            return marks[0][1]
        return -1

    def _forget(self, now: float) -> bool:
        """Drop peers not heard from for ``forget_after``; True if any went."""
        gone = [key for key, peer in self._peers.items() if now - peer.heard_at > self.forget_after]
        for key in gone:
            del self._peers[key]
            self._stuck.discard(key)
        return bool(gone)

    def status(self) -> dict[str, int | float | bool]:
        """What ``status`` shows under ``pacing``."""
        return {
            "pace_bytes": self.pace_bytes,
            "stall_timeout": self.stall_timeout,
            "paused": self.paused,
            "pauses": self.pauses,
            "subscribers": len(self._peers),
            "stuck": len(self._stuck),
            "stalls": self.stalls,
            "sent_bytes": self.clock,
        }
