"""The sync client's I/O: its sockets, its receiver thread, its sends.

:class:`ThreadedBus` publishes from any thread (a lock guards the PUSH
socket) and receives on one background thread; handlers run on that thread.
Other threads talk to it through a command queue and an inproc wake-up
socket. Every decision (numbering, batching, filtering, history) is the
core's (:mod:`.core`): this module only moves frames and wakes threads.

The receiving sockets belong to whoever holds ``_io``: normally the
receiver thread, but a reader blocked in ``Subscription.get()`` on a bus with
no handlers takes them and receives for itself. A hand-over from one thread
to another costs two context switches per frame, which doubled the latency
of an iterator and cost a fifth of its throughput; the receiver thread then
stays away while that reader keeps coming back (``_READER_GRACE``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

import zmq

from .._event import Event
from .._exceptions import BridgeError, BusClosed, PublishTimeout
from .batch import Prepared, Step
from .core import BusCore
from .driver import BusBase, new_epoch
from .limits import CONFIRM_POLL, HISTORY_POLL, RECEIVE_BATCH
from .plans import ASK_CREDIT, NOW, AwaitCredit, advance, credit_plan
from .queues import Subscriber
from .sync_calls import guarded as _guarded
from .sync_calls import not_reentered
from .sync_queue import Subscription
from .transport import connect_push, connect_sub, send_up, transport_error

__all__ = ["LIVE_BUSES", "MAX_PENDING_COMMANDS", "ThreadedBus"]

log = logging.getLogger("circus_events.client")

#: How long (s) the receiver thread leaves the sockets to a reader that received
#: for itself: back-to-back get() calls never wait for a hand-over, and a
#: reader that stops reading gives the other subscriptions back this soon.
_READER_GRACE: Final = 0.02
#: Longest single wait (s) of a reader receiving for itself, so it notices
#: a handler registered meanwhile.
_READER_POLL: Final = 0.1
#: How long (s) a reader that asked for the sockets waits before it looks again.
_IO_WAIT: Final = 0.002
#: How often (s) a caller held back by MAX_PENDING_COMMANDS looks whether the
#: bus closed meanwhile.
_COMMANDS_POLL: Final = 0.1
#: Longest single wait (s) of a send for room, so it notices close() meanwhile.
_SEND_SLICE: Final = 0.05
#: While publishes come in bursts, the receiver thread looks for a held batch
#: this often (ms) instead of being woken for each one: one wake-up per batch
#: cost the publisher more than the batching saved.
_HELD_WATCH_MS: Final = 1
#: Commands (subscribe, close, sync...) waiting for the receiver thread before
#: the caller waits too: a subscribe/close loop in one thread costs at most
#: this many pending Subscription objects (~1 KB each: 10 MB).
MAX_PENDING_COMMANDS: Final = 10_000


#: While history loads, the receiver thread wakes this often to ask again.
_HISTORY_POLL_MS: Final = int(HISTORY_POLL * 1000)

#: Buses open in this process (the at-fork hook reopens them in a child).
LIVE_BUSES: weakref.WeakSet[ThreadedBus] = weakref.WeakSet()
_LIVE_BUSES = LIVE_BUSES
_getpid = os.getpid
_monotonic = time.monotonic
_time = time.time
_BATCH_FIRST: Final = Step.BATCH_FIRST
_SEND_ALONE: Final = Step.SEND_ALONE
_SEND_BATCH: Final = Step.SEND_BATCH
_OPENED: Final = Step.OPENED


class ThreadedBus(BusBase[Subscription]):
    """The sockets and threads behind :class:`~circus_events.Bus`."""

    _subscription_type = Subscription

    def _open_io(self) -> None:
        options = self._core.options
        self._pid = _getpid()
        #: Guards the PUSH socket and the open batch. Reentrant only so that a
        #: signal handler can tell it interrupted its own thread (sync_calls).
        self._lock = threading.RLock()
        #: Notified when a credit marker comes back (publishers wait on it).
        self._credit_back = threading.Condition(threading.Lock())
        #: The receiver thread is asked to send the open batch (see _hold).
        self._flush_requested = False
        self._wake_lock = threading.Lock()  # guards the wake-up socket
        #: A wake-up is on its way to whoever holds the sockets: others need not send one.
        self._poked = False
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        #: Callers waiting for the receiver to take commands (MAX_PENDING_COMMANDS).
        self._commands_taken = threading.Condition(threading.Lock())
        self._command_waiters = 0
        #: Who still uses the context (the receiver thread, close()): the
        #: last to let go ends it, so close() never waits for a stuck handler.
        self._context_users = 2
        self._context_users_lock = threading.Lock()
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._push = self._push_now = self._context.socket(zmq.PUSH)
        connect_push(self._push, options)
        wake_address = f"inproc://circus-events-wake-{id(self)}"
        self._woken = self._context.socket(zmq.PULL)
        self._woken.bind(wake_address)
        self._wake = self._context.socket(zmq.PUSH)
        self._wake.connect(wake_address)
        self._sub = self._context.socket(zmq.XSUB)
        connect_sub(self._sub, options, [self._core.inbox, *self._core.topic_refs])
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._woken, zmq.POLLIN)
        self._core.on_hello = self._hello
        #: The right to use _sub, _woken and _poller (see the module docstring).
        self._io = threading.Lock()
        #: Readers waiting for _io, and the condition they wait on.
        self._io_free = threading.Condition(threading.Lock())
        self._io_waiters = 0
        #: A reader asked the receiver thread to let go of the sockets.
        self._yield_wanted = False
        #: Until then (monotonic) the receiver thread leaves the sockets to readers.
        self._reader_until = 0.0
        #: The thread id of a reader receiving for itself, else 0.
        self._reader_ident = 0
        #: Handler subscribers: while there are any, only the receiver thread receives.
        self._handlers = 0
        self._stop_seen = False
        self._receiver_wakeup = threading.Event()
        self._thread = threading.Thread(
            target=self._receive_loop, name=f"circus-events-{options.worker}", daemon=True
        )
        self._thread.start()
        _LIVE_BUSES.add(self)

    def _after_fork_in_child(self) -> None:
        """Replace everything inherited from the parent; keep subscriptions."""
        # The parent's sockets and context are dropped, not closed: closing
        # would touch state shared with the parent (pyzmq skips them in a child).
        self._core.options = self._core.options.after_fork()
        self._leaderships = {}  # the parent's candidacies stay the parent's
        self._core.renew(new_epoch())
        self._open_io()

    def _check_process(self) -> None:
        if self.closed:
            raise BusClosed("the bus is closed")
        if self._pid != _getpid():  # a fork the hook did not see (os.fork in C code)
            self._after_fork_in_child()

    def _ready(self) -> None:
        self._check_process()

    def _register(
        self, subscriber: Subscriber, wanted: tuple[int | None, int | None] | None
    ) -> None:
        # One command: no live event may reach it between subscribing and holding.
        self._command("sub", (subscriber, wanted))

    def _guard(self, handler: Callable[[Event], Any]) -> Callable[[Event], None]:
        return _guarded(handler)

    def _release_context(self) -> None:
        """One user of the context is done with its sockets; the last one ends it."""
        with self._context_users_lock:
            self._context_users -= 1
            last = self._context_users == 0
        if last:
            self._context.term()

    def _publish(self, prepared: Prepared) -> None:
        """Send one message now, or hold it in a batch when publishes come in a burst.

        A held batch leaves when it is full, when a different message needs
        the socket, with the publish that ends the burst, or from the receiver
        thread once it is due (:meth:`BusCore.batch_due`): holding adds at
        most about BATCH_MAX_WAIT plus one look of the receiver thread.
        """
        core = self._core
        not_reentered(self._lock)
        if core.credit.exhausted and not self._on_io_thread():
            # On the receiving thread no credit could come back while we wait.
            self._wait_for_credit()
        with self._lock:
            try:
                self._publish_locked(core, prepared)
            except zmq.ZMQError as exc:  # the sockets were closed under us
                raise transport_error(exc, self.closed) from exc
            finally:
                # The gap to the next publish counts from here: a send that
                # waited for room is not the caller slowing down.
                core.last_publish = _monotonic()

    def _publish_locked(self, core: BusCore, prepared: Prepared) -> None:
        burst = core.in_burst(_monotonic())
        wall = _time()
        step = core.place(prepared, burst, wall)
        if step is _BATCH_FIRST:
            self._send_batch(wait=True)  # PublishTimeout: this message is not taken
            step = core.place(prepared, burst, wall)
        if step is _SEND_ALONE:
            frame = core.single_frame(prepared, wall)
            self._send_locked(frame)
            core.commit(prepared, frame)
        elif step is _SEND_BATCH:
            self._send_batch(wait=False)
        elif step is _OPENED and not self._flush_requested:
            self._flush_requested = True  # the receiver thread sends it once due
            self._poke()

    def _send(self, frame: bytes, timeout: float | None = None) -> None:
        """Send a frame made elsewhere (a flush marker), after any held batch."""
        not_reentered(self._lock)
        with self._lock:
            if self._core.batch is not None:
                self._send_batch(wait=True, timeout=timeout)
            self._send_locked(frame, timeout)

    def _send_batch(
        self, *, wait: bool, timeout: float | None = None, closing: bool = False
    ) -> None:
        """Send the open batch; without ``wait`` it stays open if the pipe is full."""
        frame = self._core.batch_frame()
        if wait:
            self._send_locked(frame, timeout, closing=closing)
        else:
            try:
                self._push.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                if not self._flush_requested:  # the receiver thread retries
                    self._flush_requested = True
                    self._poke()
                return
            self._count_sent(len(frame))
        self._core.batch_sent(frame)

    def _send_locked(
        self, frame: bytes, timeout: float | None = None, *, closing: bool = False
    ) -> None:
        """Send now if the pipe has room, else wait for it (PublishTimeout), in
        slices: a close() meanwhile (it needs the lock) stops it (BusClosed)."""
        push = self._push
        try:
            push.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            seconds = self._send_timeout(timeout)
            deadline = _monotonic() + seconds
            while not push.poll(
                max(int(min(_SEND_SLICE, deadline - _monotonic()) * 1000), 0), zmq.POLLOUT
            ):
                if self.closed and not closing:
                    raise BusClosed("the bus is closed") from None
                if _monotonic() >= deadline:
                    raise self._timed_out(seconds) from None
            push.send(frame, zmq.NOBLOCK)
        self._count_sent(len(frame))

    def _wait_for_credit(self) -> None:
        """Wait until the bridge has read enough of what was sent (``credit_plan``)."""
        credit = self._core.credit
        seconds = self._send_timeout(None)
        plan = credit_plan(credit, seconds)
        step = advance(plan, None)
        while not isinstance(step, bool):
            if self.closed:
                raise BusClosed("the bus is closed")
            answer = None
            if step is NOW:
                answer = _monotonic()
            elif step is ASK_CREDIT:
                with self._lock:
                    self._send_credit_marker()
            else:
                assert isinstance(step, AwaitCredit)
                with self._credit_back:
                    if credit.exhausted:
                        self._credit_back.wait(step.timeout)
            step = advance(plan, answer)
        if not step:
            raise self._credit_timed_out(seconds)

    def _credit_returned(self) -> None:
        with self._credit_back:
            self._credit_back.notify_all()

    def _hello(self, kind: int, instance: bytes) -> None:
        """A bridge said hello (on the receiving thread): resume with it and send
        again what it has not confirmed, before anything else."""
        try:
            with self._lock:
                for frame in self._core.hello(kind, instance, _time()):
                    self._send_locked(frame)
                if self._core.credit.exhausted:  # markers sent to the old bridge died with it
                    self._send_credit_marker()
        except (PublishTimeout, zmq.ZMQError) as exc:
            # Kept still: the bridge asks again when it drops what follows.
            log.warning("could not send again what the bridge has not confirmed: %s", exc)

    def all_confirmed(self, timeout: float) -> bool:
        """Wait at most ``timeout`` until the bridge confirmed everything sent."""
        deadline = _monotonic() + timeout
        unconfirmed = self._core.unconfirmed
        while True:
            with self._lock:
                unconfirmed.apply()
                if not unconfirmed.messages:
                    return True
            left = deadline - _monotonic()
            if left <= 0:
                return False
            time.sleep(min(CONFIRM_POLL, left))

    def _watch_held(self) -> None:
        """On the receiver thread: send a held batch nobody else sent.

        Woken once when a burst starts, it then looks every _HELD_WATCH_MS,
        sends the batch once it is due (its publisher paused, or it is
        BATCH_MAX_WAIT old: sending a batch still filling cut batches short),
        and stops watching when it finds no batch open (the burst is over).
        """
        if not self._lock.acquire(blocking=False):
            return  # a publisher holds the socket: it sends the batch, or we look again
        try:
            if self._core.batch is None:
                self._flush_requested = False
            elif self._core.batch_due(_monotonic()):
                self._send_batch(wait=False)
        finally:
            self._lock.release()

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription, None)
        if self.closed:
            return
        # The bus may close meanwhile: then there is nothing left to unsubscribe from.
        with contextlib.suppress(BusClosed, BridgeError):
            self._command("unsub", subscription._subscriber)

    def _send_up(self, frame: bytes) -> None:
        """Send a request frame up the subscription socket (by the socket's holder)."""
        self._command("up", frame)

    def _command(self, kind: str, argument: Any) -> None:
        """Hand a command to whoever holds the sockets; past MAX_PENDING_COMMANDS
        wait for it to take some (never on that thread itself)."""
        commands = self._commands
        if commands.qsize() >= MAX_PENDING_COMMANDS and not self._on_io_thread():
            self._wait_for_commands()
        commands.put((kind, argument))
        self._poke()

    def _wait_for_commands(self) -> None:
        with self._commands_taken:
            self._command_waiters += 1
            try:
                while self._commands.qsize() >= MAX_PENDING_COMMANDS // 2:
                    if self.closed or self._stop_seen or not self._thread.is_alive():
                        raise BusClosed("the bus is closed")
                    self._commands_taken.wait(_COMMANDS_POLL)
            finally:
                self._command_waiters -= 1

    def _poke(self) -> None:
        """Wake whoever holds the sockets; one wake-up in flight serves everyone."""
        if self._poked:
            return
        self._poked = True
        try:
            with self._wake_lock:
                self._wake.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # wake-ups are queued already: one is enough
        except zmq.ZMQError as exc:
            raise transport_error(exc, self.closed) from exc

    def _on_io_thread(self) -> bool:
        """True on the receiver thread and on a reader that holds the sockets."""
        return (
            threading.current_thread() is self._thread
            or self._reader_ident == threading.get_ident()
        )

    def _receive_loop(self) -> None:
        """The receiver thread: serve the sockets unless a reader does."""
        try:
            while not self._stop_seen:
                left = self._reader_until - _monotonic()
                if left > 0:
                    # A reader receives for itself: look again when it may have stopped.
                    if self._flush_requested:
                        left = min(left, _HELD_WATCH_MS / 1000)
                    self._receiver_wakeup.wait(left)
                    self._receiver_wakeup.clear()
                    if self._flush_requested:
                        self._watch_held()
                    continue
                with self._io:
                    self._yield_wanted = False
                    while not (self._stop_seen or self._yield_wanted):
                        if self._reader_until > _monotonic():
                            break  # a reader took over just before us
                        self._serve(as_reader=False)
                self._io_released()
        finally:
            with self._io:
                self._sub.close(linger=0)
                self._woken.close(linger=0)
            self._release_context()

    def _receive_for(self, items: collections.deque[Any], deadline: float | None) -> bool:
        """Receive on the calling thread until ``items`` has something or the deadline passes.

        Returns False if this thread may not (a handler must run on the
        receiver thread, or the bus stops): the caller waits for the receiver.
        """
        ident = threading.get_ident()
        while not items:
            if self._handlers or self._stop_seen:
                return False
            now = _monotonic()
            if deadline is not None and now >= deadline:
                return True
            self._reader_until = now + _READER_GRACE
            if not self._io.acquire(blocking=False):
                self._wait_for_io(items, deadline)
                continue
            try:
                self._reader_ident = ident
                while not items and not (self._handlers or self._stop_seen):
                    now = _monotonic()
                    if deadline is not None and now >= deadline:
                        break
                    wait = _READER_POLL if deadline is None else min(_READER_POLL, deadline - now)
                    self._reader_until = now + wait + _READER_GRACE
                    self._serve(as_reader=True, timeout_ms=max(int(wait * 1000), 0), until=items)
            finally:
                self._reader_ident = 0
                self._reader_until = _monotonic() + _READER_GRACE
                self._io.release()
                self._io_released()
        return True

    def _wait_for_io(self, items: collections.deque[Any], deadline: float | None) -> None:
        """Ask whoever holds the sockets to let go; wait a little for them (or for items)."""
        self._yield_wanted = True
        self._poke()
        with self._io_free:
            self._io_waiters += 1
            try:
                if not items:
                    wait = (
                        _IO_WAIT
                        if deadline is None
                        else max(min(_IO_WAIT, deadline - _monotonic()), 0)
                    )
                    self._io_free.wait(wait)
            finally:
                self._io_waiters -= 1

    def _io_released(self) -> None:
        if self._io_waiters:
            with self._io_free:
                self._io_free.notify_all()

    def _serve(
        self,
        *,
        as_reader: bool,
        timeout_ms: int | None = None,
        until: collections.deque[Any] | None = None,
    ) -> None:
        """One round on the sockets, by whoever holds ``_io``: wait for them, then
        run commands, dispatch frames, and move history along.

        The receiver thread waits as long as nothing needs it; a reader waits
        ``timeout_ms`` and stops dispatching once ``until`` has something.
        """
        core = self._core
        sub, woken = self._sub, self._woken
        if not as_reader:
            # While history loads, wake now and then to ask again if unanswered;
            # while publishes come in bursts, look for held batches.
            timeout_ms = (
                _HELD_WATCH_MS
                if self._flush_requested
                else _HISTORY_POLL_MS
                if core.loads
                else None
            )
        ready = dict(self._poller.poll(timeout_ms))
        if woken in ready:
            while True:
                try:
                    woken.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            # Cleared after draining (a wake-up drained after the clear would be
            # lost: pokers would see the flag and send none) and before the
            # commands run (so any command a poker saw the flag for runs now).
            self._poked = False
            if not self._run_commands(sub):
                self._stop_seen = True
                self._receiver_wakeup.set()
                return
            if as_reader and self._handlers:
                return  # a handler arrived: the receiver thread takes over
        if self._flush_requested:
            self._watch_held()
        if sub in ready:
            deliver = core.deliver
            for _ in range(RECEIVE_BATCH):
                try:
                    frame = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if self.closed:  # closed while a handler ran: no more handlers
                    break
                handled = deliver(frame)
                if handled is not None:  # handlers to call, on this thread
                    events, handlers = handled
                    for handler in handlers:
                        for event in events:
                            handler.sink(event)
                if until:
                    break
            if core.woken:
                self._wake_readers()
            if as_reader:
                self._io_released()  # readers waiting for the sockets may have items now
        if core.loads or core.finished or core.dropping:
            self._settle()
        if core.outbox_pending:
            send_up(sub, core.take_outbox())

    def _wake_readers(self) -> None:
        woken = self._core.woken
        for subscriber in woken:
            subscriber.wake()  # type: ignore[misc]  # subscriptions have one
        woken.clear()

    def _settle(self) -> None:
        """After a round: history along (finished loads to their readers), drops reported."""
        for subscriber, events in self._core.settle(_monotonic()):
            for event in events:
                subscriber.sink(event)
            if subscriber.wake is not None:
                subscriber.wake()

    def _run_commands(self, sub: zmq.Socket[bytes]) -> bool:
        core = self._core
        commands = self._commands
        try:
            while True:
                try:
                    kind, argument = commands.get_nowait()
                except queue.Empty:
                    return True
                if kind == "stop":
                    return False
                if kind == "sub":
                    subscriber, wanted = argument
                    if subscriber.wake is None:
                        self._handlers += 1
                    core.add(subscriber)
                    self._load_history(subscriber, wanted)
                elif kind == "unsub":
                    core.remove(argument)
                elif kind == "sync":
                    core.outbox.append(core.sync_request(argument))
                elif kind == "up":  # a leader request
                    core.outbox.append(argument)
                elif kind == "local":
                    for subscriber in core.route([argument]):
                        subscriber.sink(argument)
                        if subscriber.wake is not None:
                            subscriber.wake()
        finally:
            # Subscriptions leave as their net change: a subscribe and a close
            # taken together send nothing up the socket.
            if core.outbox_pending:
                send_up(sub, core.take_outbox())
            if self._command_waiters:
                with self._commands_taken:
                    self._commands_taken.notify_all()
