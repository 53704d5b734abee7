"""The local connections that hold refused subscriptions in libzmq, and cutting one.

See :mod:`circus_events.protocol.holds` for why, and :mod:`.connections` for
how a frame's connection is found and cut.
"""

from __future__ import annotations

import logging

import zmq

from ..protocol import REFUSED_HOLD_BUDGET, RefusedHolds
from .connections import Connection, connection_of, describe, shut_down, still_open

__all__ = ["RefusalHolders"]

log = logging.getLogger("circus_events.bridge")


class RefusalHolders:
    """Charges refused subscription frames to their connection; cuts the heaviest
    holder past the budget (counted as ``cut_subscribers``, logged)."""

    def __init__(self, counters: dict[str, int], budget: int = REFUSED_HOLD_BUDGET) -> None:
        self.holds: RefusedHolds[Connection] = RefusedHolds(budget)
        self._who: dict[Connection, str] = {}
        self._counters = counters
        counters["cut_subscribers"] = 0

    def refused(self, message: zmq.Frame, frame: bytes) -> None:
        """The bridge refused or rejected ``frame``: if a subscription, libzmq
        stored it all the same, so it is charged to its connection."""
        connection = connection_of(message) if frame[:1] == b"\x01" else None
        if connection is None:
            return
        if connection not in self._who:
            self._who[connection] = describe(message)
        self.holds.refused(connection, frame[1:])
        if self.holds.to_cut() is not None:
            self._cut()

    def cancelled(self, message: zmq.Frame, frame: bytes) -> None:
        """An unsubscribe (``\\x00topic``) from a worker."""
        if not self.holds:
            return
        connection = connection_of(message)
        if connection is not None:
            self.holds.cancelled(connection, frame[1:])
            if not self.holds.held_by(connection):
                self._who.pop(connection, None)

    def _forget(self, connection: Connection) -> str:
        self.holds.forget(connection)
        return self._who.pop(connection, "peer unknown")

    def _cut(self) -> None:
        for held in self.holds.peers():
            if not still_open(held):
                self._forget(held)
        while (connection := self.holds.to_cut()) is not None:
            size = self.holds.held_by(connection)
            who = self._forget(connection)
            shut_down(connection)
            self._counters["cut_subscribers"] += 1
            log.warning(
                "cut a subscriber connection (%s): it held %d bytes of refused "
                "subscriptions, past the bridge's %d",
                who,
                size,
                self.holds.budget,
            )

    def discard_rest(self, sock: zmq.Socket[bytes]) -> None:
        """Read the rest of a multi-part message: libzmq stored its subscription
        parts all the same, so they are charged."""
        while sock.getsockopt(zmq.RCVMORE):
            part = sock.recv(zmq.NOBLOCK, copy=False)
            data = part.bytes
            if data[:1] == b"\x00":
                self.cancelled(part, data)
            else:
                self.refused(part, data)
