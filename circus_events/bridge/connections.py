"""Local subscriber connections: which one a frame came in on, and cutting one.

libzmq tells which connection a frame came in on: its file descriptor
(``ZMQ_SRCFD`` on the frame) and, on ipc, the sender's uid and pid
(``Peer-Address``, ``localhost:uid:gid:pid``). libzmq reuses a descriptor
number once it closes the connection, while frames that came in before may
still wait to be read; so a frame counts only if the pid at the other end of
its descriptor (``SO_PEERCRED``) is its sender's, and a connection here is
the pair (descriptor, socket inode): a pair whose descriptor now names
another file is a connection gone, and libzmq freed what it held.

Cutting is ``shutdown()`` on a duplicate of the descriptor: libzmq reads the
end of the stream, closes the connection itself and drops every
subscription and queued frame it held. A client's libzmq reconnects and
subscribes again, so a worker cut by mistake loses only what was sent
meanwhile, told by gaps.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Final

import zmq

__all__ = [
    "Connection",
    "connection_of",
    "describe",
    "shut_down",
    "still_open",
]

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


def still_open(connection: Connection) -> bool:
    try:
        return os.fstat(connection[0]).st_ino == connection[1]
    except OSError:
        return False


def describe(frame: zmq.Frame) -> str:
    """``pid 123, uid 0`` from libzmq's ``Peer-Address`` of an ipc frame."""
    with contextlib.suppress(zmq.ZMQError, UnicodeDecodeError):
        parts = str(frame.get("Peer-Address")).split(":")
        if len(parts) == 4:
            return f"pid {parts[3]}, uid {parts[1]}"
    return "peer unknown"


def shut_down(connection: Connection) -> None:
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
