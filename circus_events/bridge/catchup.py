"""Stream mode: a restarted bridge gives its own host what it missed, in order.

Theory of operation
-------------------
A bridge that dies takes with it what it had not handed to its local
subscribers yet; a subscriber that reconnects late to the new bridge misses
what that bridge relayed before it came back. In stream mode all of it is
in Redis (the publishers resend what Redis did not confirm, see
:mod:`.confirms`), but a bridge skips its own entries when it reads the
stream. So a bridge that finds a saved cursor (a restart) *catches up*:

1. From its start, local workers' cluster-scope frames still go to Redis
   at once, but their local delivery is held (:meth:`LocalHold.take`).
2. The stream side waits for the saved subscriptions (``resume_grace``),
   then reads from the saved cursor as usual, and this time delivers its
   own entries too, up to the *boundary*: each shard's last id when reading
   was set up (:meth:`LocalHold.start`, :meth:`LocalHold.replays`).
3. Once the cursor has passed the boundary on every shard, the held frames
   follow (:meth:`LocalHold.release`), through the bridge's duplicate
   filter (what the stream already gave is dropped), and local delivery
   is direct again. Own entries past the boundary are skipped as always:
   they are the held frames.

Per (origin, channel) the host's subscribers get the stream's order, then
the held frames' (the same order, as one worker's frames reach the bridge
and Redis in order), with repeats dropped: nothing twice, nothing out of
order. A fresh bridge (no saved cursor) holds nothing. The hold is
bounded: it ends after :data:`CATCHUP_MAX_WAIT` (Redis slow or down: local
delivery never waits for Redis longer), when the first attempt to reach
Redis fails, or past :data:`HOLD_MAX_BYTES` (the held frames go at once,
in order; counted in ``catchup_overflows``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from .stream_cursor import StreamId, parse_id

__all__ = ["CATCHUP_MAX_WAIT", "HOLD_MAX_BYTES", "LocalHold"]

log = logging.getLogger("circus_events.redis")

#: The longest a restarted bridge holds local delivery to catch up (s):
#: the wait for saved subscriptions (3 s) and a few seconds of reading.
CATCHUP_MAX_WAIT: Final = 10.0
#: Bytes of local frames held while catching up: 64 MiB is 30 s of a
#: 2,000 msg/s stream of 1 kB messages.
HOLD_MAX_BYTES: Final = 64 * 1024 * 1024


class LocalHold:
    """Local frames held while a restarted bridge catches up (see the module)."""

    __slots__ = ("_bytes", "_deliver", "_held", "active", "boundary", "deadline", "overflows")

    def __init__(self, deliver: Callable[[list[bytes]], None], now: float) -> None:
        #: True while local frames are held.
        self.active = True
        self._deliver = deliver
        self._held: list[bytes] = []
        self._bytes = 0
        #: The loop time past which the hold ends anyway.
        self.deadline = now + CATCHUP_MAX_WAIT
        #: Per shard, the last id when reading started (None: nothing there);
        #: None until reading starts.
        self.boundary: list[StreamId | None] | None = None
        self.overflows = 0

    def take(self, frame: bytes) -> bool:
        """Hold a local frame if catching up (True); False: deliver it now."""
        if not self.active:
            return False
        self._held.append(frame)
        self._bytes += len(frame)
        if self._bytes > HOLD_MAX_BYTES:
            self.overflows += 1
            self.release("the hold is full")
        return True

    def start(self, last_ids: list[StreamId | None], cursors: list[bytes]) -> None:
        """Reading starts at ``cursors``; own entries up to ``last_ids`` are replayed."""
        if not self.active:
            return
        self.boundary = last_ids
        if self.caught_up(cursors):
            self.release("nothing to catch up")

    def caught_up(self, cursors: list[bytes]) -> bool:
        """The cursors have passed the boundary on every shard."""
        boundary = self.boundary
        if boundary is None:
            return False
        return all(
            last is None or parse_id(c) >= last for c, last in zip(cursors, boundary, strict=True)
        )

    def replays(self, shard: int, entry_id: bytes) -> bool:
        """An own entry at ``entry_id`` of ``shard`` is delivered (before the boundary)."""
        boundary = self.boundary
        if boundary is None:
            return False
        last = boundary[shard]
        return last is not None and parse_id(entry_id) <= last

    def check(self, now: float, unreachable: bool) -> None:
        """Now and then (loop time ``now``): end the hold past its deadline, or
        when Redis cannot be reached (local delivery never waits for it)."""
        if self.active and (now >= self.deadline or unreachable):
            self.release("Redis is slow or unreachable")

    def release(self, why: str) -> None:
        """End the hold: the held frames go to the subscribers, in order."""
        if not self.active:
            return
        self.active = False
        held, self._held, self._bytes = self._held, [], 0
        log.info("circus-events: local delivery direct again (%s); %d held", why, len(held))
        if held:
            self._deliver(held)
