"""One resuming websocket's seam between its replay and the live feed (sans-IO).

Theory of operation
-------------------
A browser that comes back with ``last_id`` gets a replay from history (a bus
subscription with ``history``) while the hub's shared live feed goes on.
:class:`Resume` joins the two: replayed events are skipped up to and
including ``last_id``; live events are held meanwhile; the first replayed
event that is also a held live one is the seam, after which the held events
(not yet sent) follow and the replay is closed. ``last_id`` not found in the
replay means the hole could not be filled: a ``gap`` frame with ``missed``
``null`` (unknown) comes first, then what the replay had. The seam assumes
the replay and the live feed show events in the same order, which holds for
events that travel through Redis (every event from another host).

Both waits are bounded in bytes by ``hold_bytes`` (the socket's send queue,
which could not take more at once anyway): held live events past it end the
wait (a gap, then the live feed); replayed events kept while ``last_id`` is
not found yet lose their oldest first, since they are only sent if
``last_id`` never comes, after a gap of unknown size.
"""

from __future__ import annotations

from collections import deque

from .wsproto import QUEUE_BYTES, encode_gap

__all__ = ["Resume"]


class Resume:
    """Join one socket's replay (history then live, from the bus) to the live feed.

    Feed :meth:`replayed` with the replay subscription's events and
    :meth:`live` with the shared feed's; both return the frames to queue now.
    When :attr:`done`, close the replay and go on with the live feed only.
    """

    __slots__ = (
        "_held",
        "_held_bytes",
        "_held_ids",
        "_passed_ids",
        "_seek",
        "_seek_bytes",
        "done",
        "hold_bytes",
        "last_id",
        "pattern",
    )

    def __init__(self, pattern: str, last_id: str, hold_bytes: int = QUEUE_BYTES) -> None:
        self.pattern = pattern
        self.last_id = last_id
        self.hold_bytes = hold_bytes
        #: Replayed events seen while looking for last_id, (id, frame), newest
        #: last; None once last_id was found or given up on.
        self._seek: deque[tuple[str, str]] | None = deque()
        self._seek_bytes = 0
        self._held: list[tuple[str, str]] = []
        self._held_ids: set[str] = set()
        self._held_bytes = 0
        #: Replayed events sent, or dropped under the gap: not to be sent again.
        self._passed_ids: set[str] = set()
        self.done = False

    def replayed(self, event_id: str, frame: str) -> list[str]:
        """An event from the replay subscription."""
        if self.done:
            return []
        if event_id in self._held_ids:
            return self._join()
        seek = self._seek
        if seek is None:
            self._passed_ids.add(event_id)
            return [frame]
        if event_id == self.last_id:
            self._seek = None
            return []
        seek.append((event_id, frame))
        self._seek_bytes += len(frame)
        while self._seek_bytes > self.hold_bytes and len(seek) > 1:
            dropped_id, dropped = seek.popleft()
            self._seek_bytes -= len(dropped)
            self._passed_ids.add(dropped_id)  # covered by the gap: never sent late
        return []

    def live(self, event_id: str, frame: str) -> list[str]:
        """An event from the shared feed; held until the seam, unless too many."""
        if self.done:
            return [frame]
        self._held.append((event_id, frame))
        self._held_ids.add(event_id)
        self._held_bytes += len(frame)
        if self._held_bytes > self.hold_bytes:
            return self._join()
        return []

    def failed(self) -> list[str]:
        """No replay (pub/sub mode, Redis away): a gap, then the held live events."""
        if self.done:
            return []
        return self._join()

    def settle(self) -> list[str]:
        """The replay went quiet with last_id never found: send what it had, after a gap."""
        if self.done or not self._seek:
            return []
        return self._give_up()

    def cancel(self) -> None:
        """The socket unsubscribed (or went): nothing more, not even a gap."""
        self.done = True
        self._seek = None
        self._seek_bytes = 0
        self._held.clear()
        self._held_ids.clear()
        self._held_bytes = 0
        self._passed_ids.clear()

    def _give_up(self) -> list[str]:
        frames = [encode_gap(self.pattern, None)] if self._seek is not None else []
        for event_id, frame in self._seek or ():
            self._passed_ids.add(event_id)
            frames.append(frame)
        self._seek = None
        self._seek_bytes = 0
        return frames

    def _join(self) -> list[str]:
        frames = self._give_up()
        frames += [f for i, f in self._held if i not in self._passed_ids]
        self.done = True
        self._held.clear()
        self._held_ids.clear()
        self._passed_ids.clear()
        return frames
