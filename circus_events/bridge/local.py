"""The bridge's local endpoints: the namespace directory, its lock and ipc sockets.

The socket folder and the namespace folder are created or checked level by
level before anything is bound (:mod:`circus_events._sockdir`): the
namespace folder is ``0700``, or ``0750`` with group ``group``, and the
sockets ``0600``, or ``0660`` with group ``group``, so members of that group
(and nobody else) can publish and subscribe. A ``flock`` on ``bridge.lock``
(opened without following links) makes one bridge per namespace: the kernel
releases it when a bridge dies, however it dies, so a successor knows that
socket files it finds are stale and may unlink them before binding.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from typing import Final, cast

import zmq

from .._config import FRAME_SLACK, BridgeConfig, SocketPaths, local_frame_max
from .._exceptions import BridgeError
from .._sockdir import open_private_file, prepare_bridge_dir
from ..protocol import (
    LOCAL_FRAME_MAX,
    MAX_CONTROL_REQUEST,
    MAX_SUBSCRIPTION_FRAME,
    REFUSED_HOLD_BUDGET,
    hwm_for_bytes,
    split_frame,
    worst_case,
)

__all__ = [
    "PULL_HWM",
    "LocalSockets",
    "memory_limits",
    "send_local",
    "send_pieces",
    "subscriber_hwm",
]

#: Most frames queued from one worker before the bridge reads them. Workers
#: block (backpressure) past this. Frames: 20k x ~150 B is 3 MB, 20k full
#: batches (16 KiB) 320 MB, 20k of 1 MiB 20 GiB. Not lowered to bound bytes:
#: at 30, 60 and 240 frames a full PULL pipe stalled for good in tests (its
#: frames never read, the worker blocked); see ``protocol.budget``.
PULL_HWM: Final = 20_000
#: Control requests queued per peer: ``status`` is asked now and then, and
#: each request is at most MAX_CONTROL_REQUEST bytes (16 x 64 KiB = 1 MiB).
CONTROL_HWM: Final = 16
#: Replies queued per peer: a client asks once and waits, so a peer that asks
#: and never reads holds two ``status`` replies, not libzmq's default 1,000.
CONTROL_REPLY_HWM: Final = 2
#: XPUB's RCVHWM: frames queued from one subscriber (subscriptions, acks and
#: requests). libzmq moves a subscriber's whole queue into an unbounded list of
#: its own each time it looks, so this bounds how fast that list can grow:
#: with libzmq's 1,000, two peers sending junk took the bridge to 1.6 GB in
#: 10 s; with 16, eight peers leave it flat. Clients queue on their side.
UPSTREAM_HWM: Final = 16
#: How long queued deliveries may take to leave on shutdown.
CLOSE_LINGER_MS: Final = 1000
#: On shutdown, once PULL is unbound: frames libzmq had read before its
#: connections closed keep arriving for a moment; the drain ends after this
#: long without one (or after STOP_DRAIN_MAX_MS in all).
STOP_QUIET_MS: Final = 20
STOP_DRAIN_MAX_MS: Final = 2000


class LocalSockets:
    """Owns the lock, the PULL (from workers), XPUB (to workers) and control sockets."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        paths: SocketPaths,
        *,
        max_message_bytes: int,
        subscriber_hwm: int,
        subscriber_max_bytes: int,
        publisher_max_bytes: int,
        group: str | None = None,
    ) -> None:
        self.paths = paths
        sndhwm = _subscriber_hwm(subscriber_max_bytes, max_message_bytes, subscriber_hwm)
        gid = prepare_bridge_dir(os.path.dirname(paths.directory), paths.directory, group)
        self._lock_fd = _lock(paths)
        try:
            for path in (paths.pull, paths.pub, paths.control):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self.pull = context.socket(zmq.PULL)
            self.pull.setsockopt(zmq.RCVHWM, publisher_hwm(publisher_max_bytes, max_message_bytes))
            # A frame far over the limit is refused by libzmq before it is
            # allocated; the per-message check below still applies.
            self.pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + FRAME_SLACK)
            self.pull.setsockopt(zmq.LINGER, 0)
            self.pull.bind("ipc://" + paths.pull)
            self.xpub = context.socket(zmq.XPUB)
            self.xpub.setsockopt(zmq.SNDHWM, sndhwm)
            self.xpub.setsockopt(zmq.RCVHWM, UPSTREAM_HWM)
            self.xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
            # Subscription frames: a longer one makes libzmq drop its sender
            # before storing it.
            self.xpub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_FRAME)
            self.xpub.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
            self.xpub.bind("ipc://" + paths.pub)
            self.control = context.socket(zmq.ROUTER)
            self.control.setsockopt(zmq.LINGER, 0)
            self.control.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_REQUEST)
            self.control.setsockopt(zmq.RCVHWM, CONTROL_HWM)
            self.control.setsockopt(zmq.SNDHWM, CONTROL_REPLY_HWM)
            self.control.bind("ipc://" + paths.control)
            # Only this user can write the namespace folder (checked above), so
            # these paths are the sockets just bound, not links planted since.
            mode = 0o600 if gid is None else 0o660
            for path in (paths.pull, paths.pub, paths.control):
                if gid is not None:
                    os.chown(path, -1, gid, follow_symlinks=False)
                os.chmod(path, mode)
        except (zmq.ZMQError, OSError) as exc:
            self._release()
            raise BridgeError(
                f"cannot bind the bridge sockets in {paths.directory}: {exc}"
            ) from exc

    @classmethod
    def for_config(
        cls, context: zmq.Context[zmq.Socket[bytes]], config: BridgeConfig
    ) -> LocalSockets:
        """The sockets of a bridge configured by ``config``."""
        return cls(
            context,
            config.paths,
            max_message_bytes=config.max_message_bytes,
            subscriber_hwm=config.subscriber_hwm,
            subscriber_max_bytes=config.subscriber_max_bytes,
            publisher_max_bytes=config.publisher_max_bytes,
            group=config.group,
        )

    def stop_intake(self, drain: Callable[[], bool]) -> None:
        """Take every frame workers already handed over, and no more.

        ``drain`` handles a batch from PULL (True: more may wait). Draining
        first, then unbinding PULL, then draining until it stays quiet: once
        unbound, workers' PUSH sockets keep what they have not sent for the
        next bridge, and what libzmq already read from them is still
        delivered here. Before this, PULL kept accepting frames after the
        last drain, and closing it (LINGER 0) dropped them unseen.
        """
        while drain():
            pass
        with contextlib.suppress(zmq.ZMQError):
            self.pull.unbind("ipc://" + self.paths.pull)
        deadline = time.monotonic() + STOP_DRAIN_MAX_MS / 1000
        while self.pull.poll(STOP_QUIET_MS, zmq.POLLIN) and time.monotonic() < deadline:
            while drain():
                pass

    def close(self) -> None:
        """Close the sockets, remove their files, release the lock."""
        for sock in (self.pull, self.control, self.xpub):
            sock.close()
        for path in (self.paths.pull, self.paths.pub, self.paths.control):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def subscriber_hwm(subscriber_max_bytes: int, max_message_bytes: int, frame_hwm: int) -> int:
    """XPUB's SNDHWM (per subscriber pipe): ``frame_hwm``, lowered to keep that many
    of the largest frames within ``subscriber_max_bytes``."""
    return hwm_for_bytes(subscriber_max_bytes, local_frame_max(max_message_bytes), frame_hwm)


def send_pieces(send: Callable[[bytes, int], object], frame: bytes) -> None:
    """Send a frame larger than LOCAL_FRAME_MAX to local subscribers, in pieces."""
    for piece in split_frame(frame):
        send(piece, zmq.NOBLOCK)


def send_local(send: Callable[[bytes, int], object], frame: bytes) -> None:
    """Send a frame to local subscribers: as it is, or in pieces if large."""
    if len(frame) <= LOCAL_FRAME_MAX:
        send(frame, zmq.NOBLOCK)
    else:
        send_pieces(send, frame)


# Plain ints: an enum member costs a class lookup and an enum ``&`` per use.
_EVENTS: Final = int(zmq.EVENTS)
#: ``zmq.POLLIN`` as a plain int.
POLLIN: Final = int(zmq.POLLIN)


def discard_rest(sock: zmq.Socket[bytes]) -> None:
    """Read and drop the rest of a multi-part message."""
    while sock.getsockopt(zmq.RCVMORE):
        sock.recv(zmq.NOBLOCK)


def socket_fd(sock: zmq.Socket[bytes]) -> int:
    """The file descriptor that wakes an event loop for ``sock`` (edge-triggered)."""
    return cast(int, sock.getsockopt(zmq.FD))


def socket_events(sock: zmq.Socket[bytes]) -> int:
    """``sock``'s ZMQ_EVENTS (POLLIN, POLLOUT): what it can do now."""
    return cast(int, sock.getsockopt(_EVENTS))


def send_unless_full(xpub: zmq.Socket[bytes], frame: bytes) -> bool | None:
    """Send ``frame`` to local subscribers unless a queue it goes to is full.

    True: sent. False: a queue is full, nothing was sent (wait and try
    again). None: a later piece of a large frame did not fit, so the frame
    is lost to that subscriber (pieces must not interleave with other frames,
    so the rest cannot wait). For replies to one worker (history); live
    traffic drops instead, so that a stuck subscriber never stalls the others.
    """
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    try:
        pieces = split_frame(frame)
        try:
            xpub.send(pieces[0], zmq.NOBLOCK)
        except zmq.Again:
            return False
        try:
            for piece in pieces[1:]:
                xpub.send(piece, zmq.NOBLOCK)
        except zmq.Again:
            return None
        return True
    finally:
        xpub.setsockopt(zmq.XPUB_NODROP, 0)


def publisher_hwm(publisher_max_bytes: int, max_message_bytes: int) -> int:
    """PULL's RCVHWM (per publisher pipe): at most ``PULL_HWM`` frames, fewer to keep
    that many of the largest frames within ``publisher_max_bytes``."""
    return hwm_for_bytes(publisher_max_bytes, max_message_bytes + FRAME_SLACK, PULL_HWM)


_subscriber_hwm = subscriber_hwm  # the constructor's argument of that name hides it


def _lock(paths: SocketPaths) -> int:
    """Take the namespace's lock in its checked folder; never through a link."""
    fd = open_private_file(paths.lock, os.O_RDWR | os.O_CREAT, key="dir")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BridgeError(
            f"another bridge (pid {holder}) already serves {paths.directory}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def memory_limits(config: BridgeConfig) -> dict[str, int]:
    """A bridge's memory limits in force, and what they allow at most, in bytes."""
    frame = config.max_message_bytes + FRAME_SLACK
    sub_hwm = subscriber_hwm(
        config.subscriber_max_bytes, config.max_message_bytes, config.subscriber_hwm
    )
    pub_hwm = publisher_hwm(config.publisher_max_bytes, config.max_message_bytes)
    return {
        "max_subscriptions": config.max_subscriptions,
        "max_patterns": config.max_patterns,
        "subscriber_hwm_frames": sub_hwm,
        "per_subscriber_bytes": worst_case(sub_hwm, local_frame_max(config.max_message_bytes)),
        "publisher_hwm_frames": pub_hwm,
        "per_publisher_bytes": worst_case(pub_hwm, frame),
        "buffer_max_bytes": config.buffer_max_bytes,
        "hold_max_bytes": config.hold_max_bytes,
        "refused_hold_bytes": REFUSED_HOLD_BUDGET,
        "backlog_max_bytes": config.backlog_max_bytes,
    }
