"""Sequence tracking: find lost and repeated messages per (origin, channel).

Theory of operation
-------------------
Every origin numbers its messages per channel, under an epoch that grows when
the origin restarts. A receiver remembers, per (origin, channel), the epoch,
the highest sequence seen and a 64-bit window of which recent sequences it
has seen:

* the next number: delivered;
* a jump ahead: delivered, and the numbers skipped are reported as missed;
* a number already in the window: a duplicate (a replay), dropped;
* an unseen number inside the window: a late arrival, delivered;
* a number older than the window: dropped as a duplicate (too old to tell);
* a newer epoch: the origin restarted, tracking starts afresh (not a gap);
* an older epoch: a replay from before the restart, dropped.

The first message from an origin on a channel is never a gap: a subscriber
that joins late only sees what comes after it joined. State is bounded by
``max_keys``; the oldest key is forgotten first, and a forgotten key is
treated as new when it comes back.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DUPLICATE", "WINDOW", "ChannelNumbers", "SequenceTracker"]

#: Returned by :meth:`SequenceTracker.observe` for a message to drop.
DUPLICATE: Final = -1
#: How many recent sequence numbers are remembered per key.
WINDOW: Final = 64
_FULL: Final = (1 << WINDOW) - 1
#: Default bound on remembered (origin, channel) pairs: ~100 bytes each.
DEFAULT_MAX_KEYS: Final = 100_000


class SequenceTracker:
    """Per-(origin, channel) gap and duplicate detection with bounded memory."""

    __slots__ = ("_max_keys", "_state", "duplicates", "gaps", "late", "missed")

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        # key -> [epoch, highest seq, bitmap of seen seqs; bit 0 is the highest]
        self._state: dict[tuple[str, str], list[int]] = {}
        #: Number of gap events (one jump ahead counts once).
        self.gaps = 0
        #: Number of messages reported missing in total.
        self.missed = 0
        #: Number of messages dropped as duplicates or stale replays.
        self.duplicates = 0
        #: Number of messages that arrived after a later one (already counted missed).
        self.late = 0

    def __len__(self) -> int:
        return len(self._state)

    def observe(
        self, origin: str, channel: str, epoch: int, seq: int, *, count: bool = True
    ) -> int:
        """Record one message; return how many were missed before it, or DUPLICATE.

        ``count=False`` records it without touching the counters: for messages
        delivered another way (history), so that a later live copy is a duplicate.
        """
        if not count:
            saved = (self.gaps, self.missed, self.duplicates, self.late)
            result = self.observe(origin, channel, epoch, seq)
            self.gaps, self.missed, self.duplicates, self.late = saved
            return result
        key = (origin, channel)
        state = self._state.get(key)
        if state is None or epoch > state[0]:
            if state is None and len(self._state) >= self._max_keys:
                del self._state[next(iter(self._state))]
            self._state[key] = [epoch, seq, 1]
            return 0
        if epoch < state[0]:
            self.duplicates += 1
            return DUPLICATE
        highest = state[1]
        if seq > highest:
            shift = seq - highest
            state[1] = seq
            state[2] = ((state[2] << shift) | 1) & _FULL if shift < WINDOW else 1
            missed = shift - 1
            if missed:
                self.gaps += 1
                self.missed += missed
            return missed
        age = highest - seq
        if age >= WINDOW or state[2] >> age & 1:
            self.duplicates += 1
            return DUPLICATE
        state[2] |= 1 << age
        self.late += 1
        return 0

    def observe_run(
        self, origin: str, channel: str, epoch: int, first: int, count: int
    ) -> list[int] | None:
        """Record messages ``first`` to ``first + count - 1`` (a batch).

        Returns None when all of them simply follow what was seen before (the
        common case, in constant time); else one :meth:`observe` result each.
        """
        state = self._state.get((origin, channel))
        if state is not None and epoch == state[0] and first == state[1] + 1:
            state[1] = first + count - 1
            state[2] = ((state[2] << count) | ((1 << count) - 1)) & _FULL
            return None
        return [self.observe(origin, channel, epoch, first + i) for i in range(count)]

    def forget(self, origin: str) -> None:
        """Drop all state about one origin (it left for good)."""
        for key in [k for k in self._state if k[0] == origin]:
            del self._state[key]


class ChannelNumbers:
    """A sender's side: the next (epoch, seq) per channel, for at most
    ``max_channels`` channels at once.

    A sender that numbers channels it makes up as it goes (one per leader
    role) would keep every name forever; past ``max_channels`` it forgets
    them all and numbers again under the next epoch, which receivers take
    as a restart (tracking starts afresh: no gap, no duplicate).
    """

    __slots__ = ("_seqs", "epoch", "max_channels")

    def __init__(self, epoch: int, max_channels: int) -> None:
        self.epoch = epoch
        self.max_channels = max_channels
        self._seqs: dict[str, int] = {}

    def next(self, channel: str) -> tuple[int, int]:
        """The epoch and sequence number of ``channel``'s next message."""
        seq = self._seqs.get(channel, 0) + 1
        if seq == 1 and len(self._seqs) >= self.max_channels:
            self._seqs.clear()
            self.epoch += 1
        self._seqs[channel] = seq
        return self.epoch, seq

    def __len__(self) -> int:
        return len(self._seqs)
