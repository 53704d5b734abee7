"""The synchronous worker client, for threaded and pre-fork servers.

:class:`Bus` publishes from any thread (a lock guards the PUSH socket) and
receives on one background thread; handlers run on that thread. Other
threads talk to it through a command queue and an inproc wake-up socket.

The receiving sockets belong to whoever holds ``Bus._io``: normally the
receiver thread, but a reader blocked in ``Subscription.get()`` on a bus with
no handlers takes them and receives for itself. A hand-over from one thread
to another costs two context switches per frame, which doubled the latency
of an iterator and cost a fifth of its throughput; the receiver thread then
stays away while that reader keeps coming back (``_READER_GRACE``).

After ``fork()`` the child must not touch the parent's ZeroMQ sockets or
threads: an at-fork hook gives every live bus in the child a new context,
new sockets, a new receiver thread and a new identity (epoch, and the pid in
a default worker id), keeping its subscriptions and handlers.
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
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, TypeVar

import zmq

from ._client_core import (
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SEND_QUEUE,
    FLUSH_RETRY,
    HOT_GAP,
    PUBLISH_LINGER_MS,
    SYNC_RETRY,
    BusCore,
    ClientOptions,
    Failure,
    Prepared,
    QueueBound,
    Scope,
    Subscriber,
    check_timeout,
    compile_pattern,
    connect_push,
    connect_sub,
    history_args,
    or_forever,
    transport_error,
)
from ._event import Event, Gap, RawEvent
from ._exceptions import BridgeError, BusClosed, PublishTimeout, ReceiveTimeout
from .protocol import Codec, Pattern

__all__ = ["Bus", "Subscription"]

log = logging.getLogger("circus_events.client")

Handler = TypeVar("Handler", bound=Callable[[Event], Any])

#: Frames read per wake-up before commands get a turn.
_RECEIVE_BATCH: Final = 1000
#: How long (s) the receiver thread leaves the sockets to a reader that received
#: for itself: back-to-back get() calls never wait for a hand-over, and a
#: reader that stops reading gives the other subscriptions back this soon.
_READER_GRACE: Final = 0.02
#: Longest single wait (s) of a reader receiving for itself, so it notices
#: a handler registered meanwhile.
_READER_POLL: Final = 0.1
#: While publishes come in bursts, the receiver thread looks for a held batch
#: this often (ms) instead of being woken for each one: one wake-up per batch
#: cost the publisher more than the batching saved.
_HELD_WATCH_MS: Final = 1
#: Commands (subscribe, close, sync...) waiting for the receiver thread before
#: the caller waits too: a subscribe/close loop in one thread costs at most
#: this many pending Subscription objects (~1 KB each: 10 MB).
MAX_PENDING_COMMANDS: Final = 10_000
_END: Final = object()


_LIVE_BUSES: weakref.WeakSet[Bus] = weakref.WeakSet()
_CONDITIONS_MADE: Final = threading.Lock()
_EVENT_KINDS: Final = frozenset((Event, RawEvent))
_getpid = os.getpid
_monotonic = time.monotonic


class Subscription:
    """An iterator over the events matching one pattern (from :meth:`Bus.subscribe`).

    The receiver thread appends to a deque and wakes the reader once per
    batch, not once per event: a ``queue.Queue`` hand-off cost ~4 us an event.
    The queue is bounded (:class:`QueueBound`); when full, this subscription
    alone drops what comes, and ``on_gap`` is told (a ``queue_full`` gap).
    """

    def __init__(self, bus: Bus, pattern: Pattern, bound: QueueBound) -> None:
        self.pattern = pattern
        self._bus = bus
        self._items: collections.deque[Any] = collections.deque()
        self._bound = bound
        #: Made when a reader first waits (a third of what a subscribe/close
        #: pair cost); only ever replaced from None under _CONDITIONS_MADE.
        self._changed: threading.Condition | None = None
        #: Readers blocked in get(): waking nobody costs a lock round trip per batch.
        self._readers_waiting = 0
        self._subscriber = Subscriber(
            pattern, self._put, self._wake, self._fail, sink_many=self._put_many, bound=bound
        )
        self.closed = False

    @property
    def dropped(self) -> int:
        """Events this subscription dropped because its queue was full."""
        return self._bound.dropped

    def _put_many(self, events: list[Event], nbytes: int) -> None:
        # Never waits: a full queue drops for this subscription alone (the
        # receiver thread also serves the handlers and the other subscriptions).
        if self.closed:
            return
        items = self._items
        count = len(events)
        taken = self._bound.admit(count, nbytes, len(items))
        if taken == count:
            items.extend(events)
            return
        if taken:
            items.extend(events[:taken])
        self._bound.drop(events[-1], count - taken)

    def _put(self, event: Any) -> None:
        self._put_many([event], len(event.payload))

    def _wake(self) -> None:
        """New items are in (the receiver appended them before it calls this)."""
        if self._readers_waiting:
            self._notify()

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:  # else no reader ever waited: nobody to wake
            with changed:
                changed.notify_all()

    def _condition(self) -> threading.Condition:
        changed = self._changed
        if changed is None:
            with _CONDITIONS_MADE:
                changed = self._changed
                if changed is None:
                    changed = self._changed = threading.Condition(threading.Lock())
        return changed

    def _fail(self, error: Exception) -> None:
        self._items.append(Failure(error))

    def get(self, timeout: float | None = None) -> Event:
        """The next event; raises :class:`ReceiveTimeout` after ``timeout`` seconds
        (also a ``queue.Empty`` and a ``TimeoutError``), :class:`BusClosed` once
        closed and drained."""
        try:
            item = self._items.popleft()
        except IndexError:
            item = self._wait(timeout)
        if item.__class__ in _EVENT_KINDS:
            return item
        if isinstance(item, Failure):
            raise item.error
        if item is _END:
            self._items.appendleft(_END)
            raise BusClosed("subscription closed")
        event: Event = item
        return event

    def _wait(self, timeout: float | None) -> Any:
        """Block until an item arrives; take it. Safe with several reading threads:
        another may take the item first, and then this one waits again."""
        seconds = check_timeout("timeout", timeout)
        items = self._items
        deadline = None if seconds is None else time.monotonic() + seconds
        bus = self._bus
        try:
            while True:
                if not bus._receive_for(items, deadline):
                    self._wait_for_receiver(deadline)
                try:
                    return items.popleft()
                except IndexError:
                    if self.closed:
                        raise BusClosed("subscription closed") from None
                    if deadline is not None and time.monotonic() >= deadline:
                        raise self._timeout(seconds) from None
        except zmq.ZMQError as exc:
            raise transport_error(exc, bus.closed) from exc

    def _timeout(self, seconds: float | None) -> ReceiveTimeout:
        return ReceiveTimeout(f"no event for {self.pattern.text!r} within {seconds}s")

    def _wait_for_receiver(self, deadline: float | None) -> None:
        """Wait until the receiver thread has given this subscription something."""
        items = self._items
        changed = self._condition()
        with changed:
            # Counted before items is checked again: a receiver that appended
            # and then saw no reader waiting is seen here by that check.
            self._readers_waiting += 1
            try:
                while not items:
                    if self.closed:
                        raise BusClosed("subscription closed")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return  # the caller raises ReceiveTimeout
                    changed.wait(remaining)
            finally:
                self._readers_waiting -= 1

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            return self.get()
        except BusClosed:
            raise StopIteration from None

    def close(self) -> None:
        """Stop receiving; iteration ends after what is already queued. Safe
        twice, from any thread, and after the bus is closed."""
        if not self.closed:
            self._end()
            self._bus._unsubscribe(self)

    def _end(self) -> None:
        self.closed = True
        self._items.append(_END)
        self._notify()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus:
    """A worker's connection to its host's bridge (sync).

    ``Bus()`` with no arguments reads ``CIRCUS_EVENTS_DIR``, ``_NAMESPACE``,
    ``_HOST`` and ``_WORKER``, with the same defaults as the bridge.

    ``queue_size`` and ``queue_max_bytes`` bound each subscription's queue
    (defaults :data:`DEFAULT_QUEUE_SIZE` events and
    :data:`DEFAULT_QUEUE_MAX_BYTES`; ``subscribe()`` can set its own): a full
    one drops for itself alone and ``on_gap`` gets a ``queue_full``
    :class:`Gap` with its pattern. Every error a method raises is a
    :class:`CircusEventsError`.
    """

    def __init__(
        self,
        *,
        dir: str | None = None,
        namespace: str | None = None,
        worker: str | None = None,
        host: str | None = None,
        codec: str | Codec = Codec.JSON,
        echo: bool = False,
        on_gap: Callable[[Gap], Any] | None = None,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        send_queue: int = DEFAULT_SEND_QUEUE,
        max_message_bytes: int | None = None,
    ) -> None:
        options = ClientOptions.resolve(
            dir=dir,
            namespace=namespace,
            host=host,
            worker=worker,
            codec=codec,
            echo=echo,
            publish_timeout=publish_timeout,
            queue_size=queue_size,
            queue_max_bytes=queue_max_bytes,
            send_queue=send_queue,
            max_message_bytes=max_message_bytes,
        )
        self._core = BusCore(options, on_gap)
        self.closed = False
        #: Open subscriptions (a dict: closing one forgets it in O(1)).
        self._subscriptions: dict[Subscription, None] = {}
        self._flush_waiters: dict[bytes, threading.Event] = {}
        self._core.on_flush = self._flushed
        try:
            self._open_io()
        except zmq.ZMQError as exc:
            self.closed = True
            with contextlib.suppress(Exception):
                self._context.destroy(linger=0)
            raise BridgeError(
                f"cannot open the sockets to the bridge in {options.paths.directory}: {exc}"
            ) from exc
        _LIVE_BUSES.add(self)

    @property
    def worker(self) -> str:
        """This worker's id (the target of :meth:`send_to`)."""
        return self._core.options.worker

    @property
    def host(self) -> str:
        return self._core.options.host

    # -- I/O setup ------------------------------------------------------------------

    def _open_io(self) -> None:
        options = self._core.options
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards the PUSH socket and the open batch
        #: The receiver thread is asked to send the open batch (see _hold).
        self._flush_requested = False
        self._wake_lock = threading.Lock()  # guards the wake-up socket
        #: A wake-up is on its way to whoever holds the sockets: others need not send one.
        self._poked = False
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        #: Callers waiting for the receiver to take commands (MAX_PENDING_COMMANDS).
        self._commands_taken = threading.Condition(threading.Lock())
        self._command_waiters = 0
        #: close() ran on the thread that holds the sockets: the receiver
        #: thread ends the context once it has closed them.
        self._term_on_exit = False
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._push = self._context.socket(zmq.PUSH)
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

    def _after_fork_in_child(self) -> None:
        """Replace everything inherited from the parent; keep subscriptions."""
        # The parent's sockets and context are dropped, not closed: closing
        # would touch state shared with the parent (pyzmq skips them in a child).
        self._core.options = self._core.options.after_fork()
        self._core.renew()
        self._open_io()

    def _check_process(self) -> None:
        if self.closed:
            raise BusClosed("the bus is closed")
        if self._pid != os.getpid():  # a fork the hook did not see (os.fork in C code)
            self._after_fork_in_child()

    # -- public API -----------------------------------------------------------------

    def publish(self, channel: str, data: Any, *, scope: Scope = "cluster") -> None:
        """Publish ``data`` on ``channel`` to the process, the host or the cluster.

        Raises ``ValueError`` subclasses for a bad channel, scope, payload or
        size, :class:`PublishTimeout` if the bridge takes nothing in time, and
        :class:`BusClosed` once closed: only :class:`CircusEventsError` s.
        """
        if self.closed:
            raise BusClosed("the bus is closed")
        try:
            with self._lock:  # the hot path of a burst: the message joins the open batch
                now = _monotonic()
                # Within HOT_GAP of a publish in this process: no fork can have come
                # between (the at-fork hook covers os.fork anyway), so no getpid().
                if now - self._core.last_publish < HOT_GAP:
                    joined = self._core.join(channel, data, scope, now)
                    if joined:
                        self._core.last_publish = now
                        if joined == 2:
                            self._send_batch(wait=False)
                            # The gap to the next publish starts after this send
                            # (waking ZeroMQ's I/O thread can take longer than HOT_GAP).
                            self._core.last_publish = _monotonic()
                        return
            if self._pid != _getpid():
                self._check_process()
            if scope == "process":
                self._command("local", self._core.local_event(channel, data))
                return
            self._publish(self._core.prepare(channel, data, scope))
        except zmq.ZMQError as exc:  # the sockets were closed under us
            raise transport_error(exc, self.closed) from exc

    def send_to(self, worker: str, channel: str, data: Any) -> None:
        """Send ``data`` on ``channel`` to one worker, on any host."""
        self._check_process()
        try:
            self._publish(self._core.prepare(channel, data, "cluster", target=worker))
        except zmq.ZMQError as exc:
            raise transport_error(exc, self.closed) from exc

    def subscribe(
        self,
        pattern: str,
        *,
        history: int | None = None,
        since: float | None = None,
        queue_size: int | None = None,
        queue_max_bytes: int | None = None,
    ) -> Subscription:
        """Iterate over events whose channel matches ``pattern`` (glob, like PSUBSCRIBE).

        With ``history=N`` (and/or ``since``, a Unix time), the newest N
        matching events kept by Redis (stream mode) come first, then live
        ones, with no duplicate and no hole between them. If the bridge cannot
        give history, the first ``get()`` raises :class:`BridgeError`; live
        events follow.

        The subscription queues at most ``queue_size`` events and
        ``queue_max_bytes`` bytes (default: the bus's); past that it drops
        what comes, for itself alone, and ``on_gap`` gets a ``queue_full``
        :class:`Gap` with its pattern. History counts too: ask for no more
        than the queue holds. :meth:`Subscription.close` frees it.
        """
        self._check_process()
        compiled = compile_pattern(pattern)
        bound = self._core.new_bound(compiled, queue_size, queue_max_bytes)
        wanted = history_args(history, since)
        subscription = Subscription(self, compiled, bound)
        # One command: no live event may reach it between subscribing and holding.
        self._command("sub", (subscription._subscriber, wanted))
        self._subscriptions[subscription] = None
        return subscription

    def on(self, pattern: str, *, history: int | None = None) -> Callable[[Handler], Handler]:
        """Decorator: call the function (on the receiver thread) for each matching event.

        ``history=N``: first the newest N events Redis kept (stream mode).
        """
        compiled = compile_pattern(pattern)
        wanted = history_args(history, None)

        def register(handler: Handler) -> Handler:
            self._check_process()
            subscriber = Subscriber(compiled, _guarded(handler))
            self._command("sub", (subscriber, wanted))
            return handler

        return register

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until the bridge has applied every subscription made so far.

        Events published on this host after ``sync()`` returns True reach
        them. Returns False if the bridge did not answer within ``timeout``.
        """
        seconds = or_forever(check_timeout("timeout", timeout))
        self._check_process()
        token = os.urandom(8)
        done = threading.Event()
        self._flush_waiters[token] = done
        deadline = time.monotonic() + seconds
        try:
            # Repeated: a request sent while the socket is reconnecting is dropped.
            while True:
                self._command("sync", token)
                remaining = deadline - time.monotonic()
                if done.wait(min(SYNC_RETRY, max(remaining, 0))):
                    return True
                if remaining <= SYNC_RETRY:
                    return False
        except zmq.ZMQError as exc:
            raise transport_error(exc, self.closed) from exc
        finally:
            self._flush_waiters.pop(token, None)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the bridge has taken everything published so far.

        Returns False if that did not happen within ``timeout`` seconds (the
        bridge is down or slow); the messages stay queued either way.
        """
        seconds = or_forever(check_timeout("timeout", timeout))
        self._check_process()
        deadline = time.monotonic() + seconds
        # The marker comes back on our inbox: make sure the bridge knows it first.
        if not self.sync(seconds):
            return False
        token = os.urandom(8)
        done = threading.Event()
        self._flush_waiters[token] = done
        try:
            while True:  # repeated: a marker can be lost if the bridge restarts meanwhile
                remaining = deadline - time.monotonic()
                self._send(self._core.flush_frame(token), max(remaining, 0))
                if done.wait(min(FLUSH_RETRY, max(remaining, 0))):
                    return True
                if remaining <= FLUSH_RETRY:
                    return False
        except PublishTimeout:
            return False
        except zmq.ZMQError as exc:
            raise transport_error(exc, self.closed) from exc
        finally:
            self._flush_waiters.pop(token, None)

    def _flushed(self, marker: bytes) -> None:
        waiter = self._flush_waiters.get(marker)
        if waiter is not None:
            waiter.set()

    def stats(self) -> dict[str, int]:
        """Counters: published, received, gaps, missed (upstream), duplicates,
        undecodable, and dropped (by full subscription queues in this worker)."""
        return self._core.stats()

    def close(self) -> None:
        """Stop the receiver, end iterators, let queued messages leave (1 s at most).

        Safe twice, from any thread, from a handler or an ``on_gap`` callback.
        """
        if self.closed:
            return
        self.closed = True
        _LIVE_BUSES.discard(self)
        if self._pid != os.getpid():
            return
        # On the thread that holds the sockets (a handler, on_gap), waiting for
        # the receiver thread would wait for ourselves: it ends the context.
        on_io = self._on_io_thread()
        try:
            self._commands.put(("stop", None))
            self._poke()
            self._receiver_wakeup.set()
            if not on_io:
                self._thread.join(5)
            for subscription in list(self._subscriptions):
                subscription._end()
            self._subscriptions.clear()
            with self._lock:
                if self._core.batch is not None:
                    try:
                        self._send_batch(wait=True, timeout=PUBLISH_LINGER_MS / 1000)
                    except PublishTimeout:
                        log.warning(
                            "closing: %d held messages could not reach the bridge",
                            len(self._core.batch.payloads),
                        )
                self._push.close()
            with self._wake_lock:
                self._wake.close(linger=0)
            if on_io:
                self._term_on_exit = True
            else:
                self._context.term()
        except zmq.ZMQError:  # closing anyway: nothing left to tell the caller
            log.debug("closing the bus", exc_info=True)

    def __enter__(self) -> Bus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------

    def _publish(self, prepared: Prepared) -> None:
        """Send one message now, or hold it in a batch when publishes come in a burst.

        A held batch leaves when it is full, when a different message needs
        the socket, with the publish that ends the burst, or from the receiver
        thread once it is due (:meth:`BusCore.batch_due`): holding adds at
        most about BATCH_MAX_WAIT plus one look of the receiver thread.
        """
        core = self._core
        with self._lock:
            try:
                self._publish_locked(core, prepared)
            finally:
                # The gap to the next publish counts from here: a send that
                # waited for room is not the caller slowing down.
                core.last_publish = _monotonic()

    def _publish_locked(self, core: BusCore, prepared: Prepared) -> None:
        burst = core.in_burst(_monotonic())
        batch = core.batch
        if batch is not None:
            held = core.hold(prepared)
            if held:
                if held == 2 or not burst:  # full, or the burst is over
                    self._send_batch(wait=False)
                return
            self._send_batch(wait=True)  # PublishTimeout: this message is not taken
        if burst:
            core.hold(prepared)
            if not self._flush_requested:
                self._flush_requested = True
                self._poke()
            return
        self._send_locked(core.single_frame(prepared))
        core.commit(prepared)

    def _send(self, frame: bytes, timeout: float | None = None) -> None:
        """Send a frame made elsewhere (a flush marker), after any held batch."""
        with self._lock:
            if self._core.batch is not None:
                self._send_batch(wait=True, timeout=timeout)
            self._send_locked(frame, timeout)

    def _send_batch(self, *, wait: bool, timeout: float | None = None) -> None:
        """Send the open batch; without ``wait`` it stays open if the pipe is full."""
        frame = self._core.batch_frame()
        if wait:
            self._send_locked(frame, timeout)
        else:
            try:
                self._push.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                if not self._flush_requested:  # the receiver thread retries
                    self._flush_requested = True
                    self._poke()
                return
        self._core.batch_sent()

    def _send_locked(self, frame: bytes, timeout: float | None = None) -> None:
        try:
            self._push.send(frame, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        if timeout is None:
            timeout = self._core.options.publish_timeout
        if self._push.poll(int(timeout * 1000), zmq.POLLOUT):
            self._push.send(frame, zmq.NOBLOCK)
            return
        raise PublishTimeout(
            f"the bridge at {self._core.options.paths.pull} took no message for "
            f"{timeout}s and {self._core.options.send_queue} are queued; "
            "is the bridge running?"
        )

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
                    self._commands_taken.wait(0.1)
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
                left = self._reader_until - time.monotonic()
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
                        if self._reader_until > time.monotonic():
                            break  # a reader took over just before us
                        self._serve(as_reader=False)
                self._io_released()
        finally:
            with self._io:
                self._sub.close(linger=0)
                self._woken.close(linger=0)
            if self._term_on_exit:  # close() ran on the thread that held the sockets
                self._context.term()

    def _receive_for(self, items: collections.deque[Any], deadline: float | None) -> bool:
        """Receive on the calling thread until ``items`` has something or the deadline passes.

        Returns False if this thread may not (a handler must run on the
        receiver thread, or the bus stops): the caller waits for the receiver.
        """
        ident = threading.get_ident()
        while not items:
            if self._handlers or self._stop_seen:
                return False
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True
            self._reader_until = now + _READER_GRACE
            if not self._io.acquire(blocking=False):
                self._wait_for_io(items, deadline)
                continue
            try:
                self._reader_ident = ident
                while not items and not (self._handlers or self._stop_seen):
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        break
                    wait = _READER_POLL if deadline is None else min(_READER_POLL, deadline - now)
                    self._reader_until = now + wait + _READER_GRACE
                    self._serve(as_reader=True, timeout_ms=max(int(wait * 1000), 0), until=items)
            finally:
                self._reader_ident = 0
                self._reader_until = time.monotonic() + _READER_GRACE
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
                        0.002
                        if deadline is None
                        else max(min(0.002, deadline - time.monotonic()), 0)
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
            timeout_ms = _HELD_WATCH_MS if self._flush_requested else 500 if core.loads else None
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
            woken_subscribers: set[Subscriber] = set()
            for _ in range(_RECEIVE_BATCH):
                try:
                    frame = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                events = core.accept(frame)
                if events is not None:
                    for subscriber in core.route(events):
                        if subscriber.sink_many is not None:
                            subscriber.sink_many(events, len(frame))
                        else:
                            for event in events:
                                subscriber.sink(event)
                        if subscriber.wake is not None:
                            woken_subscribers.add(subscriber)
                if until:
                    break
            for subscriber in woken_subscribers:
                subscriber.wake()  # type: ignore[misc]
            if as_reader:
                self._io_released()  # readers waiting for the sockets may have items now
        if core.loads or core.finished:
            core.check_history()
            _deliver_completed(core)
        if core.dropping:
            core.report_drops()
        if core.outbox_pending:
            _send_outbox(core, sub)

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
                    subscriber, history = argument
                    if subscriber.wake is None:
                        self._handlers += 1
                    core.add(subscriber)
                    if history is not None:
                        core.add_history(subscriber, *history)
                elif kind == "unsub":
                    core.remove(argument)
                elif kind == "sync":
                    core.outbox.append(core.sync_request(argument))
                elif kind == "local":
                    for subscriber in core.route([argument]):
                        subscriber.sink(argument)
                        if subscriber.wake is not None:
                            subscriber.wake()
        finally:
            # Subscriptions leave as their net change: a subscribe and a close
            # taken together send nothing up the socket.
            if core.outbox_pending:
                _send_outbox(core, sub)
            if self._command_waiters:
                with self._commands_taken:
                    self._commands_taken.notify_all()


def _send_outbox(core: BusCore, sub: zmq.Socket[bytes]) -> None:
    for frame in core.take_outbox():
        # SNDHWM 0 on XSUB: subscriptions never meet a full pipe; a request
        # sent while the bridge is away is lost and asked again.
        with contextlib.suppress(zmq.Again):
            sub.send(frame, zmq.NOBLOCK)


def _deliver_completed(core: BusCore) -> None:
    """Hand finished history loads (history, then held live events) to their readers."""
    for subscriber, events, error in core.take_completed():
        if error is not None:
            if subscriber.fail is not None:
                subscriber.fail(error)
            else:
                log.warning("history for %s: %s", subscriber.pattern.text, error)
        for event in events:
            subscriber.sink(event)
        if subscriber.wake is not None:
            subscriber.wake()


def _guarded(handler: Callable[[Event], Any]) -> Callable[[Event], None]:
    """Run a handler; its exception is logged, never kills the receiver thread."""

    def call(event: Event) -> None:
        try:
            handler(event)
        except Exception:
            log.exception("handler %r failed on %r", handler, event)

    return call


def _reopen_in_children() -> None:
    for bus in list(_LIVE_BUSES):
        if not bus.closed:
            try:
                bus._after_fork_in_child()
            except Exception:  # never break the fork itself; the next call retries
                log.exception("could not reopen the bus after fork")


os.register_at_fork(after_in_child=_reopen_in_children)
