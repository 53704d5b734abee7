"""Refused subscriptions that libzmq keeps anyway, charged to the connection that sent them.

libzmq's XPUB stores every subscription frame in its own subscription trie
before the bridge reads it, whether the bridge then accepts it or not:
refusing a topic keeps it out of Redis and out of the interest table, not out
of libzmq, where a topic costs about 80 bytes per byte (20,000 distinct
topics of 1 KB took 1.5 GB). Only closing the connection that sent them
frees them. So the bridge charges each connection for the refused topics it
still holds, and past ``budget`` in all it cuts the connection that holds
the most (:meth:`RefusedHolds.to_cut`).

Per connection a topic is held once however often it is sent, and let go
by one unsubscribe, as libzmq does. A well-behaved worker refused a few
topics (past ``max_subscriptions``) holds a few hundred bytes; the budget is
for a peer that keeps sending topics it is refused.

Sans-IO: a peer is any hashable key; the bridge maps it to a file descriptor.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeVar

__all__ = ["HOLD_ENTRY_BYTES", "REFUSED_HOLD_BUDGET", "RefusedHolds"]

#: What one held topic is charged beyond its length (libzmq's per-entry nodes).
HOLD_ENTRY_BYTES: Final = 64
#: Refused topic bytes all connections together may hold: about 20 MiB of
#: libzmq's trie at the worst (long distinct topics), and room for a few
#: thousand refused topics of usual length.
REFUSED_HOLD_BUDGET: Final = 256 * 1024

Peer = TypeVar("Peer", bound=Hashable)


class RefusedHolds(Generic[Peer]):
    """Refused topics held per connection, and which connection to cut."""

    __slots__ = ("_held", "_sizes", "budget", "held_bytes")

    def __init__(self, budget: int = REFUSED_HOLD_BUDGET) -> None:
        self.budget = budget
        #: Refused topic bytes held by all connections, entries charged included.
        self.held_bytes = 0
        self._held: dict[Peer, set[bytes]] = {}
        self._sizes: dict[Peer, int] = {}

    def refused(self, peer: Peer, topic: bytes) -> None:
        """``peer`` subscribed to ``topic`` and the bridge refused it."""
        topics = self._held.setdefault(peer, set())
        if topic in topics:
            return
        topics.add(topic)
        cost = len(topic) + HOLD_ENTRY_BYTES
        self._sizes[peer] = self._sizes.get(peer, 0) + cost
        self.held_bytes += cost

    def cancelled(self, peer: Peer, topic: bytes) -> None:
        """``peer`` unsubscribed from ``topic``: libzmq let it go."""
        topics = self._held.get(peer)
        if topics is None or topic not in topics:
            return
        topics.discard(topic)
        cost = len(topic) + HOLD_ENTRY_BYTES
        self.held_bytes -= cost
        if topics:
            self._sizes[peer] -= cost
        else:
            del self._held[peer], self._sizes[peer]

    def forget(self, peer: Peer) -> int:
        """``peer`` is gone (closed or cut): libzmq freed what it held. Returns those bytes."""
        self._held.pop(peer, None)
        size = self._sizes.pop(peer, 0)
        self.held_bytes -= size
        return size

    def to_cut(self) -> Peer | None:
        """Over budget: the connection holding the most refused bytes; else None."""
        if self.held_bytes <= self.budget:
            return None
        return max(self._sizes, key=self._sizes.__getitem__)

    def peers(self) -> list[Peer]:
        """The connections holding refused topics."""
        return list(self._held)

    def held_by(self, peer: Peer) -> int:
        """Refused bytes ``peer`` holds (entries charged included)."""
        return self._sizes.get(peer, 0)

    def __len__(self) -> int:
        return len(self._held)
