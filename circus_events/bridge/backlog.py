"""The bridge's side of the subscribers' backlog budget: who subscribes, looks, cuts.

The bookkeeping is :class:`~circus_events.protocol.Backlog`'s (see
``protocol.backlog`` for the theory). This module learns each subscriber
connection from its subscription frames (their ``ZMQ_SRCFD``, see
:mod:`.connections`), asks the kernel, as the bytes sent call for it,
whether each one's socket is writable (one ``poll`` for all) and, if not,
how much its peer has not read (``SIOCOUTQ``), takes pace acks as proof of
reading, and
cuts the connections the bookkeeping names, with a warning naming each
one's pid and uid.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import select
import struct
import termios
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import zmq

from .._config import BridgeConfig
from ..protocol import Backlog
from ..protocol.pacing import parse_pace_ack
from .connections import connection_of, describe, shut_down
from .local import memory_limits
from .pacing import Pacer
from .rejoin import LocalHold

__all__ = ["BacklogWatch", "sent_hook", "watch_subscribers"]

log = logging.getLogger("circus_events.bridge")

#: Seconds between a look that finds the budget passed and the look that
#: cuts: long enough for a subscriber that keeps up to read what was in
#: flight even on a loaded host (50 ms was not, under the test suite). The
#: bridge reads no local publisher meanwhile (``Backlog.over``), so only
#: frames from other hosts come on top of the budget.
LOOK_AGAIN: Final = 0.2
_INT: Final = struct.Struct("i")
_ZERO: Final = bytes(_INT.size)


def _writable(fds: Iterable[int]) -> set[int]:
    """Those of ``fds`` whose socket takes more now (one system call for all)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLOUT)
    return {fd for fd, events in poller.poll(0) if events & select.POLLOUT}


def _still(fd: int, inode: int) -> bool:
    """Whether ``fd`` still names that connection (else libzmq closed it)."""
    try:
        return os.fstat(fd).st_ino == inode
    except OSError:
        return False


def _unsent(fd: int) -> int:
    """Bytes written to the socket ``fd`` that its peer has not read (SIOCOUTQ)."""
    try:
        unsent: int = _INT.unpack(fcntl.ioctl(fd, termios.TIOCOUTQ, _ZERO))[0]
    except OSError:
        return 0
    return unsent


class BacklogWatch:
    """Keeps what stuck local subscribers hold within ``backlog_max_bytes``."""

    def __init__(
        self,
        backlog: Backlog[int],
        loop: asyncio.AbstractEventLoop,
        counters: dict[str, int],
        hold: LocalHold | None = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        self.backlog = backlog
        self._loop = loop
        self._hold = hold
        self._resume = resume
        self._again: asyncio.TimerHandle | None = None
        self._counters = counters
        counters.setdefault("cut_stuck_subscribers", 0)
        #: Per descriptor: the socket's inode, and who is at the other end.
        self._connections: dict[int, tuple[int, str]] = {}

    @classmethod
    def for_config(
        cls,
        config: BridgeConfig,
        loop: asyncio.AbstractEventLoop,
        counters: dict[str, int],
        hold: LocalHold | None,
        resume: Callable[[], None],
    ) -> BacklogWatch:
        """The bridge's watch: each connection charged at most ``per_subscriber_bytes``."""
        per_peer = memory_limits(config)["per_subscriber_bytes"]
        backlog: Backlog[int] = Backlog(config.backlog_max_bytes, per_peer)
        return cls(backlog, loop, counters, hold, resume)

    def _lookup(self, message: zmq.Frame) -> tuple[int, bool] | None:
        """The descriptor ``message`` came in on, and whether it still names the
        connection known there (None: no descriptor, or closed)."""
        try:
            fd = message.get(zmq.SRCFD)
            inode = os.fstat(fd).st_ino
        except (zmq.ZMQError, OSError):
            return None
        known = self._connections.get(fd)
        return fd, known is not None and known[0] == inode

    def subscribed(self, message: zmq.Frame) -> None:
        """A subscription frame came in: know its connection (cheap when known)."""
        found = self._lookup(message)
        if found is None or found[1]:
            return
        fd = found[0]
        connection = connection_of(message)
        if connection is None:
            return
        self.backlog.left(fd)  # if known: the descriptor names a new connection now
        self._connections[fd] = (connection[1], describe(message))
        self.backlog.joined(fd)

    def acked(self, message: zmq.Frame, frame: bytes) -> None:
        """A pace ack (already checked by the pacer): its connection has read
        everything sent before that marker."""
        found = self._lookup(message)
        if found is not None and found[1]:
            self.backlog.acked(found[0], parse_pace_ack(frame)[0])

    def sent(self, nbytes: int) -> None:
        """``nbytes`` went to local subscribers: look at them when due."""
        backlog = self.backlog
        backlog.clock += nbytes
        if backlog.clock >= backlog.next_look:
            self.look()

    def look(self) -> None:
        """Ask the kernel which connections libzmq queues nothing for, then cut
        what the budget calls for."""
        backlog, connections = self.backlog, self._connections
        writable = _writable(connections)
        for fd, (inode, _who) in list(connections.items()):
            if _still(fd, inode):
                ready = fd in writable
                backlog.looked(fd, ready, 0 if ready else _unsent(fd))
            else:
                del connections[fd]
                backlog.left(fd)
        # No pace markers go out until the rejoin hold opens (a second or two
        # after a start): busy subscribers would look stuck from the kernel alone.
        if self._hold is None or self._hold.open:
            for fd, charge in backlog.to_cut():
                self._cut(fd, charge)
        backlog.plan()
        if backlog.over and self._again is None:
            self._again = self._loop.call_later(LOOK_AGAIN, self._look_again)

    def _look_again(self) -> None:
        self._again = None
        self.look()
        if not self.backlog.over and self._resume is not None:
            self._resume()  # the bridge reads its publishers again

    def close(self) -> None:
        """Stop looking."""
        if self._again is not None:
            self._again.cancel()
            self._again = None

    def _cut(self, fd: int, charge: int) -> None:
        inode, who = self._connections.pop(fd)
        shut_down((fd, inode))
        self._counters["cut_stuck_subscribers"] += 1
        log.warning(
            "cut a subscriber connection (%s): it read nothing while the bridge sent "
            "%d bytes, and stuck subscribers together passed backlog_max_bytes (%d)",
            who,
            charge,
            self.backlog.budget,
        )

    def status(self) -> dict[str, Any]:
        """``status``'s ``backlog``: the subscriber connections known, and what
        they may hold unread together (at most, as of the bytes sent since)."""
        backlog = self.backlog
        return {"subscribers": len(backlog), "charged_bytes": backlog.charged}


class CountsSent(Protocol):
    """What wants to know the bytes sent to local subscribers."""

    def sent(self, nbytes: int) -> None: ...


def sent_hook(*watchers: CountsSent | None) -> Callable[[int], None]:
    """One call for every watcher of the bytes sent to local subscribers (the
    pacer, the backlog; None: not in use)."""
    live = [watcher.sent for watcher in watchers if watcher is not None]
    if not live:
        return lambda nbytes: None
    if len(live) == 1:
        return live[0]

    def every(nbytes: int) -> None:
        for sent in live:
            sent(nbytes)

    return every


def watch_subscribers(
    config: BridgeConfig,
    loop: asyncio.AbstractEventLoop,
    xpub: zmq.Socket[bytes],
    hold: LocalHold | None,
    counters: dict[str, int],
    resume: Callable[[], None],
) -> tuple[Pacer | None, BacklogWatch | None, Callable[[int], None]]:
    """The bridge's pacer and backlog watch (None where their option is 0), and
    the one call that tells both about the bytes sent to local subscribers."""
    pacer = watch = None
    if config.pace_threshold:
        pacer = Pacer.for_config(config, loop, xpub, hold, resume)
    if config.backlog_max_bytes:
        watch = BacklogWatch.for_config(config, loop, counters, hold, resume)
    return pacer, watch, sent_hook(pacer, watch)
