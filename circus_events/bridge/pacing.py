"""The bridge's side of backpressure: markers out, acks in, PULL held or read.

The bookkeeping is :class:`~circus_events.protocol.PaceTable`'s (see
``protocol.pacing`` for the theory); this module only sends its markers on
XPUB, feeds it acks and the time, and tells the bridge when to stop and
start reading its PULL socket. While publishers are held it looks again
every quarter of ``stall_timeout``: a subscriber that stops reading then
sends nothing that would wake the bridge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import zmq

from .._config import BridgeConfig
from ..protocol import PaceTable
from .rejoin import LocalHold

__all__ = ["Pacer"]


class Pacer:
    """Holds local publishers back while a live subscriber is far behind."""

    def __init__(
        self,
        table: PaceTable,
        loop: asyncio.AbstractEventLoop,
        xpub: zmq.Socket[bytes],
        *,
        can_mark: Callable[[], bool],
        resume: Callable[[], None],
    ) -> None:
        self.table = table
        #: True while the bridge must not read its PULL socket.
        self.held = False
        self._loop = loop
        self._xpub = xpub
        self._can_mark = can_mark
        self._resume = resume
        self._timer: asyncio.TimerHandle | None = None
        self._held_since = 0.0
        #: Seconds publishers were held back, all pauses together (the current one excluded).
        self.held_seconds = 0.0

    @classmethod
    def for_config(
        cls,
        config: BridgeConfig,
        loop: asyncio.AbstractEventLoop,
        xpub: zmq.Socket[bytes],
        hold: LocalHold | None,
        resume: Callable[[], None],
    ) -> Pacer:
        """The bridge's pacer: markers wait while the rejoin hold keeps frames."""
        return cls(
            PaceTable(config.pace_threshold, config.stall_timeout),
            loop,
            xpub,
            can_mark=lambda: hold is None or hold.open,
            resume=resume,
        )

    def sent(self, nbytes: int) -> None:
        """``nbytes`` went to local subscribers; mark the stream when due."""
        table = self.table
        table.clock += nbytes
        if table.clock >= table.next_mark and self._can_mark():
            # Never refused: XPUB drops for a full pipe, and a subscriber
            # that misses a marker acknowledges the next one.
            self._xpub.send(table.mark(time.monotonic()), zmq.NOBLOCK)
            if table.evaluate(time.monotonic()) and not self.held:
                self._hold()

    def ack(self, frame: bytes) -> None:
        """A subscriber's ack (ProtocolError if malformed): maybe read again."""
        now = time.monotonic()
        self.table.ack(frame, now)
        if self.held and not self.table.evaluate(now):
            self._release()

    def _hold(self) -> None:
        self.held = True
        self._held_since = time.monotonic()
        self._arm()

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self.table.stall_timeout / 4, self._recheck)

    def _recheck(self) -> None:
        self._timer = None
        if not self.held:
            return
        if self.table.evaluate(time.monotonic()):
            self._arm()
        else:
            self._release()

    def _release(self) -> None:
        self.held = False
        self.held_seconds += time.monotonic() - self._held_since
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._resume()

    def close(self) -> None:
        """Stop looking (shutdown reads PULL to its end regardless)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.held = False

    def status(self) -> dict[str, Any]:
        """``status``'s ``pacing``: the table's counters and time spent held."""
        held = self.held_seconds + (time.monotonic() - self._held_since if self.held else 0.0)
        return {**self.table.status(), "held_seconds": round(held, 3)}
