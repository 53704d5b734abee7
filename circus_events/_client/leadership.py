"""``bus.leader(role)``: the worker's side of leader election, for both buses.

Theory of operation
-------------------
A :class:`~..protocol.lease.WorkerTerm` decides (pure); this module gives it
a clock and a way to talk. Each handle has one timer (a thread for
:class:`Leadership`, a task for :class:`AsyncLeadership`) that sends the
requests the term asks for up the bus's subscription socket, notices the
renew deadline passing even when the bridge says nothing, and calls the
``on_change`` callbacks. The bridge's answers reach :meth:`_on_reply` from
the bus's receiving side.

``is_leader`` reads the monotonic clock on every call: once the deadline has
passed it is False, whatever the timer has done yet (a process stopped and
continued finds out before it acts). For work that must never overlap with
a successor, guard the writes with :attr:`token` (see
:mod:`circus_events.fencing`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import ArgumentError, BusClosed, ChannelError, CircusEventsError
from ..protocol.lease import (
    LEASE_SCOPES,
    OP_WITHDRAW,
    Change,
    LeaderReply,
    WorkerTerm,
    build_leader_request,
    check_role,
    check_ttl,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["AsyncLeadership", "LeaderChange", "Leadership", "LeadershipBase", "check_leader_args"]

log = logging.getLogger("circus_events.leader")

#: What ``on_change`` callbacks receive.
LeaderChange = Change
#: ``release()`` waits at most this long for the bridge to read the hand-over.
RELEASE_WAIT: Final = 1.0


def check_leader_args(role: object, ttl: object, scope: object) -> tuple[str, float, str]:
    """The checked arguments of ``bus.leader``; ArgumentError saying which is wrong."""
    try:
        checked_role = check_role(role)
    except ChannelError as exc:
        raise ArgumentError("role", str(exc)) from None
    try:
        checked_ttl = check_ttl(ttl)
    except ChannelError as exc:
        raise ArgumentError("ttl", str(exc)) from None
    if scope not in LEASE_SCOPES:
        raise ArgumentError("scope", f"must be one of {', '.join(LEASE_SCOPES)}")
    assert isinstance(scope, str)
    return checked_role, checked_ttl, scope


class LeadershipBase:
    """What both handles share: the term, its lock, the callbacks."""

    def __init__(self, bus: Any, role: str, ttl: float, scope: str) -> None:
        self._bus = bus
        self.role = role
        self.ttl = ttl
        self.scope = scope
        self._worker: str = bus.worker
        self._term = WorkerTerm(role, scope, ttl)
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Change], Any]] = []
        #: Changes not reported to the callbacks yet, in order.
        self._changes: list[Change] = []
        self._pid = os.getpid()

    # -- state --------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this worker leads the role (read the clock: call it
        right before acting)."""
        if os.getpid() != self._pid:
            return False  # a forked child inherits the handle, never the term
        with self._lock:
            now = time.monotonic()
            self._note(self._term.check(now))
            return self._term.is_leader(now)

    @property
    def token(self) -> int:
        """The fencing token of the term held (or last held; 0 before any):
        it only grows for the role. Guard writes with it."""
        return self._term.token

    @property
    def holder(self) -> str | None:
        """The worker id of the current leader, as far as this worker knows."""
        if self.is_leader:
            return self._worker
        return self._term.holder or None

    @property
    def released(self) -> bool:
        return self._term.withdrawn

    def on_change(self, callback: Callable[[Change], Any]) -> Callable[[Change], Any]:
        """Call ``callback(change)`` when this worker is elected
        (``change.elected``, ``change.token``) or loses the role
        (``change.reason``). Usable as a decorator. If this worker leads
        already, ``callback`` hears of that term at once."""
        with self._lock:
            self._callbacks.append(callback)
            term = self._term
            now = time.monotonic()
            told = not any(c.elected and c.token == term.token for c in self._changes)
            current = Change(True, term.token, term.since, None, "elected")
        if term.is_leader(now) and told:
            self._report([current], [callback])
        return callback

    def __repr__(self) -> str:
        state = "leader" if self.is_leader else "released" if self.released else "candidate"
        return f"<{type(self).__name__} {self.role!r} {self.scope} {state} token={self.token}>"

    # -- the timer's work ---------------------------------------------------------------

    def _note(self, change: Change | None) -> None:
        if change is not None:
            self._changes.append(change)
            self._changed()

    def _changed(self) -> None:
        """A change is queued (the lock is held): wake the timer."""

    def _step(self) -> tuple[list[bytes], list[Change], float]:
        """Under the lock: the frames to send, the changes to report, and how
        long the timer may sleep."""
        with self._lock:
            term = self._term
            now = time.monotonic()
            self._note(term.check(now))
            frames = []
            while term.due(now):
                op, token, req = term.request(now)
                frames.append(self._frame(op, token, req))
            changes, self._changes = self._changes, []
            wake = term.next_send
            if term.leading:
                wake = min(wake, term.deadline)
            return frames, changes, max(0.0, wake - now)

    def _frame(self, op: str, token: int, req: int) -> bytes:
        return build_leader_request(
            op, self._worker, self.role, self.scope, self.ttl, token, req, self._pid
        )

    def _on_reply(self, reply: LeaderReply) -> None:
        """A bridge message for this role (on the bus's receiving side)."""
        with self._lock:
            now = time.monotonic()
            self._note(self._term.on_reply(reply, now))
            if self._term.due(now):
                self._changed()

    def _withdraw(self) -> bytes | None:
        """Stop: the withdraw frame to send (None if already released)."""
        with self._lock:
            term = self._term
            if term.withdrawn:
                return None
            token = term.offered or term.token
            self._note(term.withdraw(time.monotonic()))
            return self._frame(OP_WITHDRAW, token, 0)

    def _report(
        self, changes: list[Change], callbacks: list[Callable[[Change], Any]] | None = None
    ) -> list[Any]:
        """Call the callbacks; what coroutine functions returned (to await)."""
        pending = []
        for change in changes:
            for callback in list(self._callbacks) if callbacks is None else callbacks:
                try:
                    result = callback(change)
                except Exception:
                    log.exception("on_change callback %r failed", callback)
                    continue
                if inspect.isawaitable(result):
                    pending.append(result)
        return pending


class Leadership(LeadershipBase):
    """A :class:`~circus_events.Bus`'s candidacy for a role (``bus.leader``).

    Callbacks run on the handle's own thread. A context manager: leaving it
    releases the role.
    """

    def __init__(self, bus: Any, role: str, ttl: float, scope: str) -> None:
        super().__init__(bus, role, ttl, scope)
        self._wakeup = threading.Event()
        self._led = threading.Condition(self._lock)
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name=f"circus-events-leader-{role}", daemon=True
        )

    def _start(self) -> None:
        self._thread.start()

    def _changed(self) -> None:
        self._wakeup.set()
        self._led.notify_all()

    def _run(self) -> None:
        while not self._stopped:
            frames, changes, sleep = self._step()
            try:
                for frame in frames:
                    self._bus._send_up(frame)
            except (BusClosed, CircusEventsError):
                self._stopped = True
            self._report(changes)
            self._wakeup.wait(sleep)
            self._wakeup.clear()
        _, changes, _ = self._step()
        self._report(changes)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until this worker leads (True), or ``timeout`` seconds pass (False)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        if os.getpid() != self._pid:
            return False
        with self._led:
            while True:
                now = time.monotonic()
                self._note(self._term.check(now))
                if self._term.is_leader(now):
                    return True
                if now >= deadline or self._term.withdrawn:
                    return False
                self._led.wait(min(deadline - now, self.ttl / 6))

    def release(self) -> None:
        """Stop leading and being a candidate, and hand over at once (the
        bridge has read it when this returns, or after RELEASE_WAIT)."""
        frame = self._withdraw()
        self._stopped = True
        self._wakeup.set()
        if frame is None:
            return
        self._bus._leadership_done(self)
        try:
            self._bus._send_up(frame)
            self._bus.sync(RELEASE_WAIT)
        except CircusEventsError:
            log.debug("releasing %s: the bus is closed", self.role)
        if threading.current_thread() is not self._thread:
            self._thread.join(RELEASE_WAIT)

    def __enter__(self) -> Leadership:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class AsyncLeadership(LeadershipBase):
    """An :class:`~circus_events.AsyncBus`'s candidacy for a role
    (``bus.leader``). Callbacks run on the loop (coroutines are awaited).
    ``async with`` releases the role on exit."""

    def __init__(self, bus: Any, role: str, ttl: float, scope: str) -> None:
        super().__init__(bus, role, ttl, scope)
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"circus-events-leader-{self.role}")

    def _changed(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wakeup.set()
        else:  # is_leader read from another thread
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def _run(self) -> None:
        while True:
            frames, changes, sleep = self._step()
            try:
                for frame in frames:
                    self._bus._send_up(frame)
            except CircusEventsError:
                return
            for pending in self._report(changes):
                try:
                    await pending
                except Exception:
                    log.exception("on_change callback failed")
            if self._term.withdrawn:
                return
            try:
                async with asyncio.timeout(sleep):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until this worker leads (True), or ``timeout`` seconds pass (False)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while not self.is_leader:
            now = time.monotonic()
            if now >= deadline or self.released:
                return False
            await asyncio.sleep(min(deadline - now, self.ttl / 24, 0.05))
        return True

    async def release(self) -> None:
        """Stop leading and being a candidate, and hand over at once (the
        bridge has read it when this returns, or after RELEASE_WAIT)."""
        frame = self._withdraw()
        if frame is None:
            return
        self._bus._leadership_done(self)
        self._wakeup.set()
        try:
            self._bus._send_up(frame)
            await self._bus.sync(RELEASE_WAIT)
        except CircusEventsError:
            log.debug("releasing %s: the bus is closed", self.role)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait([task], timeout=RELEASE_WAIT)

    async def __aenter__(self) -> AsyncLeadership:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()
