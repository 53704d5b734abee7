"""What local subscribers that do not read leave queued in the bridge, all together.

Theory of operation
-------------------
libzmq bounds each subscriber's queue (``per_subscriber_bytes``), not their
sum: ten stuck workers could make a bridge hold ten times that. libzmq does
not say how much a queue holds, but the kernel says enough: libzmq writes a
subscriber's queue into its socket whenever the socket is writable. So,
looking at each connection now and then, one whose socket is writable has
nothing queued in libzmq. Between looks, a client that acknowledges a pace
marker (``protocol.pacing``) has read everything sent before it. Any other
holds at most what the bridge sent since it was last seen empty or since
the marker it acknowledged (its ``charge``, up to ``per_peer``). That errs
high, never low: for a stopped subscriber that takes little of the traffic
(once its socket is full), and for a busy one that acknowledges nothing
(pacing off, or a client of its own) caught with a full socket at a look.

libzmq keeps one copy of a frame however many subscribers' queues hold it,
so what they hold together is at most the bytes sent within any one's
charge: the union of the spans ``[read, read + per_peer]`` of the clock, not
the sum of their lengths (three stopped workers taking the same traffic
hold it once).

Past ``budget`` in all at two looks in a row, the bridge cuts the
connection that has not read for the longest, then the next, until the rest
fits (those sharing the oldest frames all go, as only that frees them). The
second look comes a little later by the wall clock: looks come as bytes are
sent, when sockets are fullest, so a busy subscriber caught with a full
socket gets a second look, at which one whose unsent bytes changed is taken
to read. A cut client's libzmq reconnects and subscribes again, and its
worker is told what it lost by gaps. A connection seen to read, however
slowly, starts again from nothing: its own high-water mark bounds it, and
pacing holds local publishers for it (one that acknowledges no markers and
reads slower than its publishers send is not bounded by this budget).

Looks cost a system call per connection, so they are spread by the
bytes sent (the only way a charge grows): that union grows by at most what
is sent, so the next look comes when what is left of the budget is sent.

Sans-IO: a peer is any hashable key (the bridge uses the file descriptor);
``clock`` is bytes sent to subscribers so far.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeVar

__all__ = ["DEFAULT_BACKLOG_BYTES", "MIN_LOOK_EVERY", "Backlog"]

#: All local subscribers together: two stuck workers at their worst (469 MiB
#: each with the defaults), or any number taking small messages.
DEFAULT_BACKLOG_BYTES: Final = 1024 * 1024 * 1024
#: Fewest bytes sent between looks (a look costs each connection a system
#: call): what the budget may be overrun by, besides what is sent before the
#: second look.
MIN_LOOK_EVERY: Final = 1024 * 1024

Peer = TypeVar("Peer", bound=Hashable)


class _Connection:
    """Up to where a connection is known to have read (the clock then), and its
    socket's unsent bytes at the last look."""

    __slots__ = ("read_clock", "unsent")

    def __init__(self, clock: int) -> None:
        self.read_clock = clock
        self.unsent = 0


class Backlog(Generic[Peer]):
    """Charges each local subscriber connection for what it may hold unread."""

    def __init__(self, budget: int, per_peer: int) -> None:
        self.budget = budget
        self.per_peer = per_peer
        #: Bytes sent to local subscribers so far (the caller adds to it).
        self.clock = 0
        #: When :attr:`clock` reaches this, look at every connection.
        self.next_look = MIN_LOOK_EVERY
        self._peers: dict[Peer, _Connection] = {}
        #: Over budget at the last look (cuts wait for a second one).
        self.over = False

    def __len__(self) -> int:
        return len(self._peers)

    def joined(self, peer: Peer) -> None:
        """A connection subscribed (it holds nothing before)."""
        if peer not in self._peers:
            self._peers[peer] = _Connection(self.clock)

    def left(self, peer: Peer) -> None:
        """A connection closed or was cut: libzmq freed its queue."""
        self._peers.pop(peer, None)

    def looked(self, peer: Peer, writable: bool, unsent: int = 0) -> None:
        """``peer``'s socket was ``writable`` (libzmq queues nothing for it) or not,
        with ``unsent`` bytes its subscriber has not read. At the second look
        (:attr:`over`), other unsent bytes than at the first mean it reads: a
        stopped subscriber's full socket does not change."""
        connection = self._peers[peer]
        if writable or (self.over and unsent != connection.unsent):
            connection.read_clock = self.clock
        connection.unsent = unsent

    def acked(self, peer: Peer, clock: int) -> None:
        """``peer`` acknowledged the pace marker sent at ``clock`` (the pacer's
        clock, which counts the same bytes as this one): it read all before."""
        connection = self._peers.get(peer)
        if connection is not None and connection.read_clock < clock:
            connection.read_clock = min(clock, self.clock)

    def charge(self, peer: Peer) -> int:
        """The most ``peer`` may hold unread in the bridge."""
        return min(self.clock - self._peers[peer].read_clock, self.per_peer)

    @property
    def charged(self) -> int:
        """What all connections together may hold: the bytes sent within any
        one's charge (a frame is held once, however many hold it)."""
        clock, most = self.clock, self.per_peer
        total = end = 0
        for start in sorted(c.read_clock for c in self._peers.values()):
            stop = min(start + most, clock)
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total

    def to_cut(self) -> list[tuple[Peer, int]]:
        """Over budget at this look and the one before: the connections to cut and
        their charges, the one behind longest first, until the rest fits;
        forgotten here. (Over at one look only: the caller looks again a little
        later, which gives a busy subscriber caught with a full socket a second
        chance: looks come as bytes are sent, when sockets are fullest.)"""
        if self.charged <= self.budget:
            self.over = False
            return []
        if not self.over:
            self.over = True
            return []
        self.over = False
        clock, most = self.clock, self.per_peer
        ranked = sorted((c.read_clock, i, p) for i, (p, c) in enumerate(self._peers.items()))
        # held[k]: what all but the k behind longest hold together, worked out
        # from the newest back (spans sorted by start also end in order), so
        # that thousands of stuck connections cost one pass, not one per cut.
        held = [0] * (len(ranked) + 1)
        next_start = clock
        for k in range(len(ranked) - 1, -1, -1):
            start = ranked[k][0]
            held[k] = held[k + 1] + min(start + most, clock, next_start) - start
            next_start = start
        keep = next(k for k, total in enumerate(held) if total <= self.budget)
        cuts: list[tuple[Peer, int]] = []
        for start, _i, peer in ranked[:keep]:
            cuts.append((peer, min(clock - start, most)))
            del self._peers[peer]
        return cuts

    def plan(self) -> None:
        """Set :attr:`next_look`: once what is left of the budget is sent (at
        least MIN_LOOK_EVERY on); not while over budget, as the caller looks
        again by the clock on the wall then."""
        if self.over:
            self.next_look = 1 << 62
        else:
            self.next_look = self.clock + max(MIN_LOOK_EVERY, self.budget - self.charged)
