"""Which of its workers' messages a bridge already relayed: a resend is not relayed twice.

Theory of operation
-------------------
With publisher confirms (:mod:`.confirms`) a worker sends everything not
confirmed again after each hello from its bridge. Some hellos find the
bridge already holding those frames: a worker that publishes as it starts
gets one hello for its inbox subscription and one for the frame the bridge
dropped before the worker's resume marker, and both hellos make it resend;
a worker whose connection came back resends what the bridge relayed before.
Receivers drop such repeats by id, but in Redis they take room, and a
stream's history of N entries would hold fewer than N events.

So the bridge remembers, per (worker, sequence key), the epoch and the runs
of sequence numbers it relayed, merged as they grow (a worker's frames on
one key come in order, so there is usually a single run). A frame whose
numbers all lie in a run is a repeat and is not relayed; any other frame is
(a frame lost with a broken connection and resent after newer ones fills
the hole between two runs). A key whose frames Redis never took (dropped
from a full buffer, or refused) is forgotten (:meth:`Relayed.forget`), so
that their resend goes through. Forgetting errs towards relaying: a key past
:data:`MAX_KEYS` forgets the oldest key, a key with more than
:data:`MAX_RUNS` holes its lowest run, and a frame from an older epoch is
relayed; each at worst lets a repeat through, for the receivers to drop.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_KEYS", "MAX_RUNS", "Relayed"]

#: (worker, sequence key) pairs remembered: at most ~1 KB each with the
#: longest worker ids and channel names, so ~10 MiB.
MAX_KEYS: Final = 10_000
#: Runs of relayed numbers kept per key (holes: frames lost and not resent yet).
MAX_RUNS: Final = 8


class Relayed:
    """Per (worker, key): the epoch and the runs of sequence numbers relayed."""

    __slots__ = ("_keys", "max_keys")

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        #: (worker, key) -> [epoch, low, high, low, high, ...], runs ascending.
        self._keys: dict[tuple[str, str], list[int]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def first_time(self, worker: str, key: str, epoch: int, first: int, count: int) -> bool:
        """Record a frame's messages ``first`` .. ``first + count - 1``; False if
        every one of them was relayed before (a resend: drop it)."""
        last = first + count - 1
        keys = self._keys
        state = keys.get((worker, key))
        if state is None or epoch > state[0]:
            if state is None and len(keys) >= self.max_keys:
                del keys[next(iter(keys))]
            keys[(worker, key)] = [epoch, first, last]
            return True
        if epoch < state[0]:
            return True  # from before the worker's numbering restarted: cannot tell
        if first == state[-1] + 1:  # the common case: the next frame in order
            state[-1] = last
            return True
        for i in range(1, len(state), 2):
            if state[i] <= first and last <= state[i + 1]:
                return False
        self._add_run(state, first, last)
        return True

    def forget(self, worker: str, key: str) -> None:
        """Forget what was relayed on ``key``: some of it never reached Redis."""
        self._keys.pop((worker, key), None)

    @staticmethod
    def _add_run(state: list[int], first: int, last: int) -> None:
        """Merge ``first .. last`` into the runs (touching runs join)."""
        runs = [(state[i], state[i + 1]) for i in range(1, len(state), 2)]
        runs.append((first, last))
        runs.sort()
        merged = [runs[0]]
        for low, high in runs[1:]:
            top_low, top_high = merged[-1]
            if low <= top_high + 1:
                merged[-1] = (top_low, max(top_high, high))
            else:
                merged.append((low, high))
        del merged[: max(0, len(merged) - MAX_RUNS)]
        state[1:] = [n for run in merged for n in run]
