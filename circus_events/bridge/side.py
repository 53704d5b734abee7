"""The public face both Redis sides share, forwarded to their :class:`.link.RedisLink`.

:class:`.redis_side.RedisSide` and :class:`.stream_side.StreamSide` are
this face plus their mode's decisions; the bridge (``core.py``) sees only
the face and each side's ``add_interest``/``remove_interest``/``history``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .catchup import LocalHold
from .link import RedisLink

__all__ = ["LinkedSide", "Publish"]


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

    async def run(self) -> None:
        """Keep both connections up until :meth:`close`. Never raises for Redis trouble."""
        await self._link.run()

    async def close(self) -> None:
        """Flush briefly, delete the presence record, close both connections. Safe twice."""
        await self._link.close()

    def on_acked(self, callback: Callable[[deque[Any]], None]) -> None:
        """Tell ``callback`` the tags of what Redis has taken (publisher confirms)."""
        self._link.queue.on_acked = callback

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
