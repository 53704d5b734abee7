"""The synchronous worker client, for threaded and pre-fork servers.

:class:`Bus` is the public face of :class:`~circus_events._client.threaded.ThreadedBus`
(the sockets and the receiver thread) over the shared core
(:mod:`circus_events._client.core`): what it decides is decided there once,
for :class:`~circus_events.AsyncBus` too.

After ``fork()`` the child must not touch the parent's ZeroMQ sockets or
threads: an at-fork hook gives every live bus in the child a new context,
new sockets, a new receiver thread and a new identity (epoch, and the pid in
a default worker id), keeping its subscriptions and handlers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType
from typing import Any, Final

import zmq

from ._client.batch import FULL
from ._client.driver import new_token
from ._client.leadership import Leadership
from ._client.limits import (
    DEFAULT_WAIT_TIMEOUT,
    HOT_GAP,
    PUBLISH_LINGER,
    RECEIVER_JOIN_TIMEOUT,
)
from ._client.options import Scope, check_timeout, or_forever
from ._client.plans import (
    AskSync,
    AwaitConfirmed,
    AwaitMarker,
    Plan,
    SendMarker,
    advance,
    flush_plan,
    sync_plan,
)
from ._client.sync_calls import close_inherited_connections, held_here, not_reentered
from ._client.sync_queue import Subscription
from ._client.threaded import LIVE_BUSES, MAX_PENDING_COMMANDS, ThreadedBus
from ._client.transport import transport_error
from ._exceptions import BusClosed, PublishTimeout

__all__ = ["MAX_PENDING_COMMANDS", "Bus", "Subscription"]

log = logging.getLogger("circus_events.client")

_FULL: Final = FULL
_getpid = os.getpid
_monotonic = time.monotonic
_time = time.time


class Bus(ThreadedBus):
    """A worker's connection to its host's bridge (sync).

    ``Bus()`` with no arguments reads ``CIRCUS_EVENTS_DIR``, ``_NAMESPACE``,
    ``_HOST``, ``_WORKER`` and ``_MAX_MESSAGE_BYTES``, with the same defaults
    as the bridge.

    ``queue_size`` and ``queue_max_bytes`` bound each subscription's queue
    (defaults :data:`DEFAULT_QUEUE_SIZE` events and
    :data:`DEFAULT_QUEUE_MAX_BYTES`; ``subscribe()`` can set its own): a full
    one drops for itself alone and ``on_gap`` gets a ``queue_full``
    :class:`Gap` with its pattern. ``send_queue`` (frames) and
    ``send_queue_bytes`` bound what waits for the bridge: past either,
    ``publish`` waits up to ``publish_timeout``. ``max_delay`` (seconds,
    default None: no limit) drops events that arrive older than that,
    before any handler or subscription sees them, and reports each to
    ``on_gap`` as a ``late`` gap: latency bounded in time when a worker
    cannot keep up, at the price of events. Every error a method raises
    is a :class:`CircusEventsError`.
    """

    def publish(self, channel: str, data: Any, *, scope: Scope = "cluster") -> None:
        """Publish ``data`` on ``channel`` to the process, the host or the cluster.

        Raises ``ValueError`` subclasses for a bad channel, scope, payload or
        size, :class:`PublishTimeout` if the bridge takes nothing in time, and
        :class:`BusClosed` once closed: only :class:`CircusEventsError` s.
        """
        if self.closed:
            raise BusClosed("the bus is closed")
        lock = self._lock
        if lock._is_owned():  # type: ignore[attr-defined]  # a signal handler interrupted us
            not_reentered(lock)
        try:
            with lock:  # the hot path of a burst: the message joins the open batch
                now = _monotonic()
                # Within HOT_GAP of a publish in this process: no fork can have come
                # between (the at-fork hook covers os.fork anyway), so no getpid().
                if now - self._core.last_publish < HOT_GAP:
                    joined = self._core.join(channel, data, scope, now)
                    if joined:
                        self._core.last_publish = now
                        if joined is _FULL:
                            self._send_batch(wait=False)
                            # The gap to the next publish starts after this send
                            # (waking ZeroMQ's I/O thread can take longer than HOT_GAP).
                            self._core.last_publish = _monotonic()
                        return
            if self._pid != _getpid():
                self._check_process()
            if scope == "process":
                self._command("local", self._core.local_event(channel, data, _time()))
                return
            prepared = self._core.prepare(channel, data, scope)
        except zmq.ZMQError as exc:  # the sockets were closed under us
            raise transport_error(exc, self.closed) from exc
        self._publish(prepared)

    def send_to(self, worker: str, channel: str, data: Any) -> None:
        """Send ``data`` on ``channel`` to one worker, on any host."""
        self._check_process()
        self._publish(self._core.prepare(channel, data, "cluster", target=worker))

    def sync(self, timeout: float = DEFAULT_WAIT_TIMEOUT) -> bool:
        """Wait until the bridge has applied every subscription made so far.

        Events published on this host after ``sync()`` returns True reach
        them. Returns False if the bridge did not answer within ``timeout``.
        """
        seconds = or_forever(check_timeout("timeout", timeout))
        self._check_process()
        token = new_token()
        return self._run(sync_plan(token, seconds), token)

    def flush(self, timeout: float = DEFAULT_WAIT_TIMEOUT) -> bool:
        """Wait until the bridge has taken everything published so far and,
        in stream mode, confirmed that Redis has it.

        Returns False if that did not happen within ``timeout`` seconds (the
        bridge or Redis is down or slow); the messages stay queued, and kept
        until confirmed, either way.
        """
        seconds = or_forever(check_timeout("timeout", timeout))
        self._check_process()
        sync_token, token = new_token(), new_token()
        return self._run(flush_plan(sync_token, token, seconds), sync_token, token)

    def _run(self, plan: Plan, *tokens: bytes) -> bool:
        """Carry out a plan of :mod:`circus_events._client.plans`, on this thread."""
        with self._markers(tokens, threading.Event) as waiters:
            action = advance(plan, None)
            while not isinstance(action, bool):
                reply: Any = None
                if isinstance(action, AwaitMarker):
                    reply = waiters[action.token].wait(action.timeout)
                elif isinstance(action, AwaitConfirmed):
                    reply = self.all_confirmed(action.timeout)
                elif isinstance(action, AskSync):
                    self._command("sync", action.token)
                elif isinstance(action, SendMarker):
                    try:
                        self._send(self._core.flush_frame(action.token, _time()), action.timeout)
                        reply = True
                    except PublishTimeout:
                        reply = False
                else:  # NOW
                    reply = _monotonic()
                action = advance(plan, reply)
            return action

    def leader(self, role: str, *, ttl: float = 10.0, scope: str = "cluster") -> Leadership:
        """Run for leader of ``role``: at most one worker in the cluster (per
        host with ``scope="host"``) leads it at a time; see :class:`Leadership`.

        ``ttl``: the lease, in seconds. A leader believes it leads for two
        thirds of it after each renewal its bridge confirmed (renewals go
        every sixth); a dead worker or host is replaced within ``ttl`` + 1 s,
        a released role within 1 s. Every candidate of a role should use the
        same ``ttl``.
        """
        role, ttl, scope = self._leader_args(role, ttl, scope)
        self._check_process()
        leadership = Leadership(self, role, ttl, scope)
        self._leaderships[(scope, role)] = leadership
        leadership._start()
        return leadership

    def close(self) -> None:
        """Stop the receiver thread, end iterators, let queued messages leave.

        Waits for a handler still running (up to RECEIVER_JOIN_TIMEOUT, 5 s,
        before the held messages go anyway), then up to PUBLISH_LINGER (1 s)
        for the held batch and up to as long for the queued messages to
        reach the bridge; a handler still running after that keeps the
        receiver thread, which ends the context once it returns. Safe twice,
        from any thread, from a handler or an ``on_gap`` callback, and from a
        signal handler that interrupted a publish (then that call's held
        messages are lost, counted, and queued ones leave only while the
        process lives: the interrupted call still has the socket).
        """
        if self.closed:
            return
        if self._pid == _getpid():
            for leadership in list(self._leaderships.values()):
                leadership.release()  # type: ignore[attr-defined]  # a Leadership
        self.closed = True
        LIVE_BUSES.discard(self)
        if self._pid != _getpid():
            return
        # On the thread that holds the sockets (a handler, on_gap), waiting for
        # the receiver thread would wait for ourselves: it ends the context.
        on_io = self._on_io_thread()
        if held_here(self._lock):
            self._close_interrupted(on_io)
            return
        try:
            self._stop_receiver(on_io)
            self._end_subscriptions()
            with self._lock:
                if self._core.batch is not None:
                    try:
                        self._send_batch(wait=True, timeout=PUBLISH_LINGER, closing=True)
                    except PublishTimeout:
                        self._lost_on_close()
                self._push.close()
            with self._wake_lock:
                self._wake.close(linger=0)
            # Ends the context unless the receiver thread still runs (a handler
            # past RECEIVER_JOIN_TIMEOUT, or close() on it): then it ends it.
            self._release_context()
        except zmq.ZMQError:  # closing anyway: nothing left to tell the caller
            log.debug("closing the bus", exc_info=True)

    def _close_interrupted(self, on_io: bool) -> None:
        """close() from a signal handler that interrupted this thread in a send.

        The interrupted call holds the lock and may be inside the PUSH socket:
        leave both alone (and the context they keep) rather than wait for it
        forever; stop the receiver and count the held batch lost.
        """
        try:
            self._stop_receiver(on_io)
        except zmq.ZMQError:
            log.debug("closing the bus", exc_info=True)
        self._end_subscriptions()
        if self._core.batch is not None:
            self._lost_on_close()

    def _stop_receiver(self, on_io: bool) -> None:
        """Tell the receiver thread to stop; wait for it (a running handler:
        RECEIVER_JOIN_TIMEOUT at most) unless this is that thread."""
        self._commands.put(("stop", None))
        self._poke()
        self._receiver_wakeup.set()
        if not on_io:
            self._thread.join(RECEIVER_JOIN_TIMEOUT)

    def __enter__(self) -> Bus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reopen_in_children() -> None:
    # First drop the parent's connections (all buses' at once: a bus reopened
    # first makes new ones to the same paths), so the bridge sees them go
    # when the parent closes, not when this child exits.
    paths = {
        path
        for bus in list(LIVE_BUSES)
        if not bus.closed
        for path in (bus._core.options.paths.pull, bus._core.options.paths.pub)
    }
    if paths:
        close_inherited_connections(paths)
    for bus in list(LIVE_BUSES):
        if not bus.closed:
            try:
                bus._after_fork_in_child()
            except Exception:  # never break the fork itself; the next call retries
                log.exception("could not reopen the bus after fork")


os.register_at_fork(after_in_child=_reopen_in_children)
