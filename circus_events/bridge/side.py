"""The public face both Redis sides share, forwarded to their :class:`.link.RedisLink`.

:class:`.redis_side.RedisSide` and :class:`.stream_side.StreamSide` are
this face plus their mode's decisions; the bridge (``core.py``) sees only
the face and each side's ``add_interest``/``remove_interest``/``history``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from .catchup import LocalHold
from .link import RedisLink

__all__ = ["CONGESTION_RECHECK", "LinkedSide", "Publish"]

#: While congested, how often the side looks whether it still is.
CONGESTION_RECHECK: Final = 0.02


class Publish(Protocol):
    """:meth:`RedisLink.publish`'s signature."""

    def __call__(
        self, frame: bytes, topic_end: int, messages: int = 1, tag: Any = None
    ) -> None: ...


class LinkedSide:
    """The public face both Redis sides share, each call forwarded to their link.

    ``publish`` is the link's own bound method (no extra call on the hot path).
    """

    publish: Publish
    #: Stream mode: local frames held while a restarted bridge catches up.
    local_hold: LocalHold | None = None

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self.config = link.config
        self.publish = link.publish
        #: Publishing what is ready in one go: defer_flush() first, flush() after.
        self.defer_flush = link.defer_flush
        self.flush = link.flush
        #: Set while both connections serve.
        self.connected_event = link.connected_event
        #: Set while a sync reply need not wait: Redis serves every local
        #: interest (``subscriptions_settled``), or it is not connected.
        self.settled_event = link.settled_event
        #: Set once the first attempt to reach Redis ended, either way.
        self.first_attempt = link.first_attempt
        self._congested_at = link.config.buffer_max_bytes // 2
        self._recheck: asyncio.TimerHandle | None = None
        self._on_uncongested: Callable[[], None] | None = None
        self._holding = False
        #: Times a congested Redis held local publishers back (``status``).
        self.congestions = 0

    @property
    def congested(self) -> bool:
        """Connected, yet Redis takes less than local workers send: the write
        buffer is full and half of ``buffer_max_bytes`` waits behind it.

        The bridge stops reading its local publishers meanwhile (``publish``
        waits; nothing is dropped), as it does for a slow local subscriber,
        and :meth:`on_uncongested`'s callback tells it when to read again.
        Never while Redis is away: local delivery goes on, and the buffer
        drops its oldest past ``buffer_max_bytes``.
        """
        link = self._link
        pub = link.pub
        if pub is None or not pub.writing_paused or link.queue.pending_bytes < self._congested_at:
            return False
        if self._recheck is None and link.loop is not None:
            if not self._holding:  # a new congestion, not the same one looked at again
                self._holding = True
                self.congestions += 1
                if link.throttle.allow("congested"):
                    link.log.info("circus-events: Redis takes less than local workers send")
            self._recheck = link.loop.call_later(CONGESTION_RECHECK, self._look_again)
        return True

    def on_uncongested(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a congestion the bridge saw has ended."""
        self._on_uncongested = callback

    def _look_again(self) -> None:
        self._recheck = None
        if self.congested:
            return  # looks again
        self._holding = False
        if self._on_uncongested is not None:
            self._on_uncongested()

    async def run(self) -> None:
        """Keep both connections up until :meth:`close`. Never raises for Redis trouble."""
        await self._link.run()

    async def close(self) -> None:
        """Flush briefly, delete the presence record, close both connections. Safe twice."""
        await self._link.close()

    def on_acked(self, callback: Callable[[deque[Any]], None], lost: Callable[[Any], None]) -> None:
        """Tell ``callback`` the tags of what Redis has taken (publisher
        confirms), and ``lost`` each tag of what it never will."""
        self._link.queue.on_acked = callback
        self._link.queue.on_lost = lost

    def request(self, cmd: bytes) -> asyncio.Future[Any]:
        """Send a command on the publishing connection, in order with the
        messages; the future gets its reply (a ConnectionError if it is lost)."""
        return self._link.request(cmd)

    @property
    def connected(self) -> bool:
        return self._link.connected

    def presence_record(self) -> dict[str, Any]:
        """The JSON-able record other hosts read (see :meth:`RedisLink.presence_record`)."""
        return self._link.presence_record()
