"""Small helpers of :class:`circus_events.Bus`'s threads: handlers and its lock."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from .._event import Event
from .._exceptions import UsageError

__all__ = ["close_inherited_connections", "guarded", "held_here", "not_reentered"]

log = logging.getLogger("circus_events.client")


def held_here(lock: Any) -> bool:
    """True if this thread holds ``lock`` (an RLock): a signal handler
    interrupted this thread inside it, since no user code runs under it."""
    return bool(lock._is_owned())


def not_reentered(lock: Any) -> None:
    """Refuse a send from a signal handler that interrupted one on this
    thread: it would hang (the lock was plain) or break the open batch."""
    if held_here(lock):
        raise UsageError(
            "publish or flush from a signal handler that interrupted one on the "
            "same thread; close() works there"
        )


def guarded(handler: Callable[[Event], Any]) -> Callable[[Event], None]:
    """Run a handler; its exception is logged, never kills the receiver thread."""

    def call(event: Event) -> None:
        try:
            handler(event)
        except Exception:
            log.exception("handler %r failed on %r", handler, event)

    return call


def close_inherited_connections(paths: set[str]) -> None:
    """In a child after fork: close the descriptors of the parent's unix
    socket connections to ``paths`` (a bus's bridge sockets).

    The child never uses them (it drops the parent's ZeroMQ context), but
    while they stay open the bridge sees the parent's subscriber alive and
    keeps queueing for it. Linux only (``/proc/self/fd``); elsewhere nothing.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    wanted = {os.fsencode(path) for path in paths} | set(paths)
    for name in names:
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as probe:
                if probe.family != socket.AF_UNIX or probe.getpeername() not in wanted:
                    continue
        except OSError:
            continue  # the listing's own descriptor, gone, or not connected
        with contextlib.suppress(OSError):
            os.close(fd)
