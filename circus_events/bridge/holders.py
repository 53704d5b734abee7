"""The local connections that hold refused subscriptions in libzmq, and cutting one.

See :mod:`circus_events.protocol.holds` for why. libzmq tells which
connection a frame came in on: its file descriptor (``ZMQ_SRCFD`` on the
frame) and, on ipc, the sender's uid and pid (``Peer-Address``,
``localhost:uid:gid:pid``). libzmq reuses a descriptor number once it closes
the connection, while frames that came in before may still wait to be read;
so a frame counts only if the pid at the other end of its descriptor
(``SO_PEERCRED``) is its sender's, and a connection here is the pair
(descriptor, socket inode): a pair whose descriptor now names another file
is a connection gone, and libzmq freed what it held.

Cutting is ``shutdown()`` on a duplicate of the descriptor: libzmq reads the
end of the stream, closes the connection itself and drops every
subscription it held. A client's libzmq reconnects and subscribes again, so
a worker cut by mistake loses only what was sent meanwhile, told by gaps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from typing import Final

import zmq

from ..protocol import REFUSED_HOLD_BUDGET, RefusedHolds

__all__ = ["RefusalHolders", "connection_of"]

log = logging.getLogger("circus_events.bridge")

#: A local connection: (file descriptor, socket inode).
Connection = tuple[int, int]
#: ``struct ucred`` (pid, uid, gid), what ``SO_PEERCRED`` returns.
_UCRED: Final = struct.Struct("3i")


def connection_of(frame: zmq.Frame) -> Connection | None:
    """The connection ``frame`` came in on, if it is still open.

    None for libzmq's own frames (the unsubscribes of a connection that
    closed), and for a frame read after its connection closed: its descriptor
    may name another connection by now, so the sender's pid (from the frame)
    must be the pid at the other end of the descriptor (``SO_PEERCRED``).
    """
    try:
        fd = frame.get(zmq.SRCFD)
        sender = int(str(frame.get("Peer-Address")).rsplit(":", 1)[1])
        duplicate = os.dup(fd)
    except (zmq.ZMQError, OSError, ValueError, IndexError):
        return None
    try:
        with socket.socket(fileno=duplicate) as sock:
            credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            inode = os.fstat(sock.fileno()).st_ino
    except OSError:
        return None
    pid = _UCRED.unpack(credentials)[0]
    return (fd, inode) if pid == sender else None


def _still_open(connection: Connection) -> bool:
    try:
        return os.fstat(connection[0]).st_ino == connection[1]
    except OSError:
        return False


def _describe(frame: zmq.Frame) -> str:
    """``pid 123, uid 0`` from libzmq's ``Peer-Address`` of an ipc frame."""
    with contextlib.suppress(zmq.ZMQError, UnicodeDecodeError):
        parts = str(frame.get("Peer-Address")).split(":")
        if len(parts) == 4:
            return f"pid {parts[3]}, uid {parts[1]}"
    return "peer unknown"


def _shut_down(connection: Connection) -> None:
    """End ``connection`` for libzmq to close, if its descriptor still names it."""
    fd, inode = connection
    try:
        duplicate = os.dup(fd)
    except OSError:
        return
    try:
        sock = socket.socket(fileno=duplicate) if os.fstat(duplicate).st_ino == inode else None
    except OSError:
        sock = None
    if sock is None:
        os.close(duplicate)
        return
    with sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


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
            self._who[connection] = _describe(message)
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
            if not _still_open(held):
                self._forget(held)
        while (connection := self.holds.to_cut()) is not None:
            size = self.holds.held_by(connection)
            who = self._forget(connection)
            _shut_down(connection)
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
