"""When a starting bridge may deliver to its local workers: the rejoin hold (sans-IO).

Theory of operation
-------------------
A bridge that starts (or restarts) while workers run meets them again in
whatever order their ZeroMQ sockets reconnect. A publisher's ``PUSH`` pipe
hands over everything it queued while the bridge was away the moment it
connects; a subscriber counts only once its ``XSUB`` pipe has connected and
its subscriptions have reached ``XPUB``. What reaches ``XPUB`` before that
matches nobody and is gone, and when the subscriber had never seen that
origin it cannot even report a gap. (The circus case of issue 12: the
plugin was down for 26 s, its workers ran; every subscriber that came back
after a publisher lost that publisher's first 133 messages.)

So a new bridge holds local delivery for a short window: frames that would
go to ``XPUB`` (from local publishers and from Redis alike) are kept in
order, bounded in bytes, and let out together once

* the workers that were connected to the previous bridge (the bridge saves
  their names, see ``bridge.rejoin``) have subscribed again, and at least
  :data:`REJOIN_MIN_WAIT` has passed since the sockets were bound: a worker
  that was waiting for the bridge retries every 1.1 s at most (the clients'
  ``RECONNECT_IVL_MAX`` 1 s plus libzmq's jitter of up to
  ``RECONNECT_IVL`` 0.1 s), so by then it is back, whether or not the
  previous bridge knew it; or
* ``max_wait`` (``rejoin_timeout``) has passed since the sockets were bound
  (a worker that died meanwhile never comes back); or
* the frames held reach ``max_bytes`` (``hold_max_bytes``).

When no previous bridge left a list, the hold starts only if a frame shows
that someone waited: one stamped before the sockets were bound (a
publisher's backlog, or a stream entry written during the downtime). A
bridge started before its workers thus delays nothing. Past
:data:`REJOIN_MIN_WAIT` with no such frame the window closes for good.

This module decides; it reads no clock (``now`` comes in) and sends nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Final, Literal

__all__ = ["REJOIN_MIN_WAIT", "RejoinHold"]

#: The shortest hold (seconds after the bind): the clients retry connecting
#: every 1.1 s at most; 0.4 s more for the handshake on a loaded host.
REJOIN_MIN_WAIT: Final = 1.5

Phase = Literal["watching", "holding", "open"]


class RejoinHold:
    """The hold of one bridge start: what to keep, and when to let it out.

    ``expected``: the workers the previous bridge had (empty: none known).
    ``bound_at``: the monotonic time the sockets were bound; ``bound_wall``:
    the same moment by the wall clock, to tell a backlog (frames are stamped
    with the wall clock). ``max_wait`` 0 turns the hold off.
    """

    def __init__(
        self,
        expected: Iterable[str],
        *,
        bound_at: float,
        bound_wall: float,
        max_wait: float,
        max_bytes: int,
        min_wait: float = REJOIN_MIN_WAIT,
    ) -> None:
        self.missing = set(expected)
        self.expected = len(self.missing)
        self.bound_at = bound_at
        self.bound_wall = bound_wall
        self.min_wait = min(min_wait, max_wait)
        self.max_wait = max_wait
        self.max_bytes = max_bytes
        self.frames: deque[bytes] = deque()
        self.bytes = 0
        #: Frames held since the start (all of them are let out).
        self.held = 0
        self.reason: str | None = None
        self.released_after: float | None = None
        self.phase: Phase
        if max_wait <= 0:
            self.phase = "open"
            self.reason = "off"
        elif self.missing:
            self.phase = "holding"
        else:
            self.phase = "watching"

    @property
    def open(self) -> bool:
        """True once frames go straight to the workers."""
        return self.phase == "open"

    def keep(self, frame: bytes, stamped: float | None) -> bool:
        """Offer a frame bound for the workers, stamped ``stamped`` (wall clock;
        None if unknown). True: the hold keeps it. False: deliver it now."""
        if self.phase == "watching":
            if stamped is None or stamped >= self.bound_wall:
                return False
            self.phase = "holding"  # a backlog: someone waited for this bridge
        elif self.phase == "open":
            return False
        self.frames.append(frame)
        self.bytes += len(frame)
        self.held += 1
        return True

    def arrived(self, worker: str) -> None:
        """``worker`` subscribed (its inbox): one fewer to wait for."""
        self.missing.discard(worker)

    def due(self, now: float) -> str | None:
        """Why the window must close at ``now`` (then call :meth:`release`), or None."""
        if self.phase == "open":
            return None
        waited = now - self.bound_at
        if self.phase == "watching":
            return "no backlog" if waited >= self.min_wait else None
        if self.bytes >= self.max_bytes:
            return "hold_max_bytes"
        if waited >= self.max_wait:
            return "rejoin_timeout"
        if waited >= self.min_wait and not self.missing:
            return "workers back" if self.expected else "reconnect window"
        return None

    def next_check(self, now: float) -> float | None:
        """When :meth:`due` may next say something new (arrivals and frames aside)."""
        if self.phase == "open":
            return None
        first = self.bound_at + self.min_wait
        if self.phase == "watching" or now < first:
            return first
        return self.bound_at + self.max_wait

    def release(self, reason: str, now: float) -> list[bytes]:
        """Close the window: the held frames, in order, to deliver now."""
        frames = list(self.frames)
        self.frames.clear()
        self.bytes = 0
        self.phase = "open"
        self.reason = reason
        self.released_after = round(now - self.bound_at, 3)
        return frames

    def status(self) -> dict[str, Any]:
        """JSON-able: the phase, what is held, who is awaited, why it ended."""
        return {
            "state": self.phase,
            "held_frames": len(self.frames),
            "held_bytes": self.bytes,
            "held_total": self.held,
            "expected_workers": self.expected,
            "missing_workers": len(self.missing),
            "released_after": self.released_after,
            "reason": self.reason,
        }
