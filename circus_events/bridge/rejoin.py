"""The rejoin hold of a starting bridge, on the event loop (the policy is
:class:`circus_events.protocol.rejoin.RejoinHold`).

While the hold is not open, the bridge sends every frame meant for its
workers through :meth:`LocalHold.send` instead of ``XPUB``; the hold keeps
or passes it, lets the kept frames out in order when its window closes,
then hands ``XPUB`` back to the bridge (``on_open``).

Who was connected before: the bridge saves the names of its present
workers (those with an inbox subscription) to ``workers.json`` in its
namespace folder, a second after they change and when it stops. The file
is written to a temporary name and renamed over, each opened with
``O_NOFOLLOW`` as our own plain file (``_sockdir.open_private_file``) in a
folder only the bridge's user can write. A new bridge reads it (at most
:data:`MAX_FILE_BYTES`, every name checked) before it serves. Workers do
not announce themselves: libzmq re-sends each one's subscriptions (its
inbox among them) on every reconnect, which is the announcement, and a
worker that never met a bridge is covered by the shortest wait instead
(see the protocol module).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

from .._config import BridgeConfig
from .._exceptions import ChannelError, ProtocolError, UnsafePathError
from .._sockdir import open_private_file
from ..protocol import FLAG_DIRECT, FLUSH_CHANNEL, check_frame
from ..protocol.envelope import HEADER, VERSION
from ..protocol.rejoin import RejoinHold
from ..protocol.topics import INBOX_PREFIX, validate_worker_id

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_SAVED_WORKERS",
    "SAVE_DELAY",
    "WORKERS_FILE",
    "LocalHold",
    "start_hold",
]

log = logging.getLogger("circus_events.bridge")

#: The file in the namespace folder that lists the present workers.
WORKERS_FILE: Final = "workers.json"
#: Workers saved at most (sorted by name): 10,000 ids of ~40 bytes is ~0.5 MB.
MAX_SAVED_WORKERS: Final = 10_000
#: A longer file is not read (10,000 ids of 200 bytes fit).
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
#: Seconds between a change in the workers and its save (changes in between
#: are saved together): the list a SIGKILLed bridge leaves is this old at most.
SAVE_DELAY: Final = 1.0

_INBOX: Final = INBOX_PREFIX.encode()


def frame_stamp(frame: bytes) -> float | None:
    """The wall-clock time a frame's (first) message was stamped with; None if
    unreadable, and for a piece of a large frame (``protocol.chunks``): the hold
    starts only on a whole frame, so a frame's pieces are all held or none."""
    try:
        start = frame.index(b"\0") + 1
        fields = HEADER.unpack_from(frame, start)
    except (ValueError, struct.error):
        return None
    return float(fields[-1]) if fields[0] == VERSION else None


class LocalHold:
    """Holds a new bridge's local delivery until its workers are back (see the module)."""

    def __init__(
        self,
        directory: str,
        *,
        max_wait: float,
        max_bytes: int,
        deliver: Callable[[bytes], Any],
        on_open: Callable[[], None],
        loop: Any,
    ) -> None:
        self.path = os.path.join(directory, WORKERS_FILE)
        self._deliver = deliver
        self._on_open = on_open
        self._loop = loop
        expected = load_workers(self.path) if max_wait > 0 else []
        self.policy = RejoinHold(
            expected,
            bound_at=loop.time(),
            bound_wall=time.time(),
            max_wait=max_wait,
            max_bytes=max_bytes,
        )
        self._timer: Any = None
        self._save_timer: Any = None
        self._workers: Callable[[], list[str]] | None = None
        if self.policy.expected:
            log.info(
                "holding local delivery until %d worker(s) of the previous bridge are back "
                "(%gs at most)",
                self.policy.expected,
                max_wait,
            )
        self._arm()

    @property
    def open(self) -> bool:
        return self.policy.open

    @property
    def keeping(self) -> bool:
        """True while frames wait in the hold, not delivered yet."""
        return bool(self.policy.frames)

    # -- the send path while the hold is not open ---------------------------------

    def send(self, frame: bytes, flags: int = 0) -> None:
        """Instead of ``XPUB.send``: keep the frame, or pass it on. A flush
        marker passes: it says the bridge has taken what its worker sent
        before it, which stays true of frames held (``flush()`` need not wait)."""
        policy = self.policy
        if frame.startswith(_INBOX) and _is_flush_marker(frame):
            self._deliver(frame)
            return
        if policy.keep(frame, frame_stamp(frame) if policy.phase == "watching" else None):
            if policy.bytes >= policy.max_bytes:
                self.check()
            return
        self._deliver(frame)

    def worker_changed(self, worker: str, added: bool) -> None:
        """A worker subscribed to its inbox (``added``) or dropped it."""
        if self.policy.open:
            self.changed()
        elif added:
            self.policy.arrived(worker)
            if not self.policy.missing:
                self.check()

    def check(self) -> None:
        """Close the window if it is due; else look again when it may be."""
        reason = self.policy.due(self._loop.time())
        if reason is not None:
            self.release(reason)
        else:
            self._arm()

    def release(self, reason: str) -> None:
        """Let everything held out, in order, and hand XPUB back to the bridge."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.policy.open:
            return
        held = self.policy.held
        frames = self.policy.release(reason, self._loop.time())
        for frame in frames:
            self._deliver(frame)
        self._on_open()
        if held or self.policy.expected:
            log.info(
                "local delivery open after %.3fs (%s): %d frame(s) held, %d worker(s) missing",
                self.policy.released_after,
                reason,
                held,
                len(self.policy.missing),
            )
        self.changed()  # the list can be saved again

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.policy.next_check(self._loop.time())
        if when is not None:
            self._timer = self._loop.call_at(when, self.check)

    # -- the saved list of workers ---------------------------------------------------

    def watch(self, workers: Callable[[], list[str]]) -> None:
        """Save ``workers()`` a little after each :meth:`changed`."""
        self._workers = workers

    def changed(self) -> None:
        """The present workers changed: save them soon (not while holding: the
        list is partial then, and the saved one still names who is awaited)."""
        if self._workers is None or not self.policy.open or self._save_timer is not None:
            return
        self._save_timer = self._loop.call_later(SAVE_DELAY, self.save)

    def save(self) -> None:
        """Write the present workers now (unless the hold is still on)."""
        self._save_timer = None
        if self._workers is not None and self.policy.open:
            save_workers(self.path, self._workers())

    def close(self) -> None:
        """On shutdown: deliver what is held, save the list (with the workers
        still awaited, if it stops while holding), stop the timers."""
        awaited = set() if self.policy.open else set(self.policy.missing)
        self.release("stopping")
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        if self._workers is not None:
            save_workers(self.path, sorted(awaited.union(self._workers())))

    def status(self) -> dict[str, Any]:
        return self.policy.status()


def _is_flush_marker(frame: bytes) -> bool:
    try:
        envelope = check_frame(frame)
    except ProtocolError:
        return False
    return envelope.channel == FLUSH_CHANNEL and bool(envelope.flags & FLAG_DIRECT)


def start_hold(
    config: BridgeConfig,
    xpub: zmq.Socket[bytes],
    loop: asyncio.AbstractEventLoop,
    workers: Callable[[], list[str]],
    use: Callable[[Callable[..., Any]], None],
) -> LocalHold:
    """A bridge's hold, just after its sockets are bound: ``use(send)`` tells the
    bridge where frames for its workers go (the hold's ``send`` while it is on,
    ``xpub.send`` from then on)."""

    def deliver(frame: bytes) -> None:
        xpub.send(frame, zmq.NOBLOCK)

    hold = LocalHold(
        config.paths.directory,
        max_wait=config.rejoin_timeout,
        max_bytes=config.hold_max_bytes,
        deliver=deliver,
        on_open=lambda: use(xpub.send),
        loop=loop,
    )
    hold.watch(workers)
    use(xpub.send if hold.open else hold.send)
    return hold


def load_workers(path: str) -> list[str]:
    """The workers a previous bridge saved; [] if there is no file or it is bad."""
    if not os.path.lexists(path):
        return []
    try:
        fd = open_private_file(path, os.O_RDONLY, key="dir")
    except UnsafePathError as exc:
        log.warning("not reading the previous workers: %s", exc)
        return []
    try:
        with os.fdopen(fd, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        log.warning("not reading the previous workers from %s: %s", path, exc)
        return []
    if len(data) > MAX_FILE_BYTES:
        log.warning("not reading the previous workers: %s is over %d bytes", path, MAX_FILE_BYTES)
        return []
    try:
        record = json.loads(data)
        names = record["workers"]
    except (ValueError, TypeError, KeyError, RecursionError):  # nested past the parser's depth
        log.warning("not reading the previous workers: %s is not a list of workers", path)
        return []
    workers: list[str] = []
    if not isinstance(names, list):
        return workers
    for name in names[:MAX_SAVED_WORKERS]:
        with contextlib.suppress(ChannelError):
            validate_worker_id(name)
            workers.append(name)
    return workers


def save_workers(path: str, workers: list[str]) -> None:
    """Write the list to a temporary file, then rename it over ``path``."""
    data = json.dumps({"workers": sorted(workers)[:MAX_SAVED_WORKERS]}).encode()
    temporary = path + ".tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        fd = open_private_file(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, key="dir")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except (OSError, UnsafePathError) as exc:
        log.warning("cannot save the present workers to %s: %s", path, exc)
