"""The asyncio worker client: :class:`AsyncBus`, the twin of :class:`~circus_events.Bus`.

One reader task per bus drains the SUB socket and feeds handlers (awaited in
order, so one channel's events are handled in the order sent) and bounded
subscription queues. A full queue drops for its subscription alone and
``on_gap`` is told (a ``queue_full`` gap): the reader never waits for a
subscription, so a forgotten one cannot stall the handlers or the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Final, TypeVar

import zmq
import zmq.asyncio

from ._client_core import (
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SEND_QUEUE,
    FLUSH_RETRY,
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
from ._event import Event, Gap
from ._exceptions import BridgeError, BusClosed, PublishTimeout, ReceiveTimeout, UsageError
from .protocol import Codec, Pattern

__all__ = ["AsyncBus", "AsyncSubscription"]

log = logging.getLogger("circus_events.client")

Handler = TypeVar("Handler", bound=Callable[[Event], Any])
_RECEIVE_BATCH: Final = 1000
_END: Final = object()


class AsyncSubscription:
    """An async iterator over the events matching one pattern.

    Its queue is bounded (:class:`QueueBound`, as :class:`Subscription`'s):
    when full, this subscription alone drops what comes, and ``on_gap`` is
    told (a ``queue_full`` gap).
    """

    def __init__(self, bus: AsyncBus, pattern: Pattern, bound: QueueBound) -> None:
        self.pattern = pattern
        self._bus = bus
        self._bound = bound
        # Unbounded as a Queue: the QueueBound decides what goes in.
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.subscriber = Subscriber(
            pattern, self._put, fail=self._fail, sink_many=self._put_many, bound=bound
        )
        self.closed = False

    @property
    def dropped(self) -> int:
        """Events this subscription dropped because its queue was full."""
        return self._bound.dropped

    async def get(self, timeout: float | None = None) -> Event:
        """The next event; raises :class:`ReceiveTimeout` (also a ``TimeoutError``)
        after ``timeout`` seconds, :class:`BusClosed` once closed and drained."""
        queue = self._queue
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            if self.closed:
                raise BusClosed("subscription closed") from None
            seconds = check_timeout("timeout", timeout)
            try:
                item = await asyncio.wait_for(queue.get(), seconds)
            except TimeoutError:
                raise ReceiveTimeout(
                    f"no event for {self.pattern.text!r} within {seconds}s"
                ) from None
        if isinstance(item, Failure):
            raise item.error
        if item is _END:
            queue.put_nowait(_END)
            raise BusClosed("subscription closed")
        event: Event = item
        return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.get()
        except BusClosed:
            raise StopAsyncIteration from None

    def _put_many(self, events: list[Event], nbytes: int) -> None:
        """Queue what fits of a frame's events; the rest is dropped and counted."""
        if self.closed:
            return
        queue = self._queue
        count = len(events)
        taken = self._bound.admit(count, nbytes, queue.qsize())
        put = queue.put_nowait
        if taken == count:
            for event in events:
                put(event)
            return
        for event in events[:taken]:
            put(event)
        self._bound.drop(events[-1], count - taken)

    def _put(self, event: Event) -> None:
        self._put_many([event], len(event.payload))

    def _fail(self, error: Exception) -> None:
        self._queue.put_nowait(Failure(error))

    def close(self) -> None:
        """Stop receiving; iteration ends after what is already queued. Safe
        twice and after the bus is closed."""
        if not self.closed:
            self._end()
            self._bus._unsubscribe(self)

    def _end(self) -> None:
        self.closed = True
        self._queue.put_nowait(_END)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncBus:
    """A worker's connection to its host's bridge (asyncio). Same options as ``Bus``."""

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
        self._subscriptions: dict[AsyncSubscription, None] = {}
        try:
            self._context = zmq.asyncio.Context()
            self._push = self._context.socket(zmq.PUSH)
            self._sub = self._context.socket(zmq.XSUB)
            # Synchronous views of the same sockets for the non-blocking fast paths:
            # an asyncio socket returns a future even for NOBLOCK calls.
            self._push_now: zmq.Socket[bytes] = zmq.Socket.shadow(self._push.underlying)
            self._sub_now: zmq.Socket[bytes] = zmq.Socket.shadow(self._sub.underlying)
            connect_push(self._push_now, options)
            connect_sub(self._sub_now, options, [self._core.inbox])
        except zmq.ZMQError as exc:
            self.closed = True
            with contextlib.suppress(Exception):
                self._context.destroy(linger=0)
            raise BridgeError(
                f"cannot open the sockets to the bridge in {options.paths.directory}: {exc}"
            ) from exc
        #: The subscription changes wait for the loop's next turn (a subscribe
        #: and a close within one turn send nothing).
        self._outbox_scheduled = False
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._core.on_flush = self._flushed
        self._reader: asyncio.Task[None] | None = None
        #: Held while a send waits for room, so that frames leave in order.
        self._send_lock = asyncio.Lock()
        self._flush_scheduled = False

    @property
    def worker(self) -> str:
        return self._core.options.worker

    @property
    def host(self) -> str:
        return self._core.options.host

    async def start(self) -> AsyncBus:
        """Start receiving (done for you by ``async with`` and ``subscribe``)."""
        self._ensure_reader()
        return self

    def _ensure_reader(self) -> None:
        if self.closed:
            raise BusClosed("the bus is closed")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError(
                "an AsyncBus is used from a coroutine in its event loop (no loop runs here)"
            ) from None
        if self._reader is None:
            self._reader = loop.create_task(self._read_loop(), name=f"circus-events-{self.worker}")
        elif self._reader.get_loop() is not loop:
            raise UsageError("this AsyncBus belongs to another event loop")

    async def publish(self, channel: str, data: Any, *, scope: Scope = "cluster") -> None:
        """Publish ``data`` on ``channel`` to the process, the host or the cluster."""
        if self.closed:
            raise BusClosed("the bus is closed")
        try:
            if scope == "process":
                core = self._core
                event = core.local_event(channel, data)
                for subscriber in core.route([event]):
                    await _call(subscriber.sink, event)
                if core.dropping:
                    core.report_drops()
                return
            await self._publish(self._core.prepare(channel, data, scope))
        except zmq.ZMQError as exc:  # the sockets were closed under us
            raise transport_error(exc, self.closed) from exc

    async def send_to(self, worker: str, channel: str, data: Any) -> None:
        """Send ``data`` on ``channel`` to one worker, on any host."""
        if self.closed:
            raise BusClosed("the bus is closed")
        try:
            await self._publish(self._core.prepare(channel, data, "cluster", target=worker))
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
    ) -> AsyncSubscription:
        """Async-iterate over events whose channel matches ``pattern``.

        ``history=N`` / ``since=<Unix time>``, ``queue_size`` and
        ``queue_max_bytes``: as for :meth:`Bus.subscribe`.
        """
        self._ensure_reader()
        compiled = compile_pattern(pattern)
        bound = self._core.new_bound(compiled, queue_size, queue_max_bytes)
        wanted = history_args(history, since)
        subscription = AsyncSubscription(self, compiled, bound)
        self._subscriptions[subscription] = None
        self._add(subscription.subscriber)
        if wanted is not None:
            self._core.add_history(subscription.subscriber, *wanted)
            self._send_outbox()
        return subscription

    def on(self, pattern: str, *, history: int | None = None) -> Callable[[Handler], Handler]:
        """Decorator: call (or await) the function for each matching event.

        ``history=N``: first the newest N events Redis kept (stream mode).
        """
        compiled = compile_pattern(pattern)
        wanted = history_args(history, None)

        def register(handler: Handler) -> Handler:
            self._ensure_reader()
            subscriber = Subscriber(compiled, _guarded(handler))
            self._add(subscriber)
            if wanted is not None:
                self._core.add_history(subscriber, *wanted)
                self._send_outbox()
            return handler

        return register

    async def sync(self, timeout: float = 5.0) -> bool:
        """Wait until the bridge has applied every subscription made so far."""
        seconds = or_forever(check_timeout("timeout", timeout))
        self._ensure_reader()
        token = os.urandom(8)
        request = self._core.sync_request(token)

        async def keep_asking() -> None:
            # Repeated: a request sent while the socket is reconnecting is dropped.
            while True:
                self._send_outbox()  # the subscriptions first: the request covers them
                with contextlib.suppress(zmq.ZMQError):
                    self._sub_now.send(request, zmq.NOBLOCK)
                await asyncio.sleep(SYNC_RETRY)

        asking = asyncio.create_task(keep_asking())
        try:
            return await self._wait_marker(token, seconds)
        finally:
            asking.cancel()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the bridge has taken everything published so far."""
        seconds = or_forever(check_timeout("timeout", timeout))
        self._ensure_reader()
        deadline = time.monotonic() + seconds
        # The marker comes back on our inbox: make sure the bridge knows it first.
        if not await self.sync(seconds):
            return False
        token = os.urandom(8)
        while True:  # repeated: a marker can be lost if the bridge restarts meanwhile
            remaining = deadline - time.monotonic()
            try:
                await self._send(self._core.flush_frame(token), max(remaining, 0))
            except PublishTimeout:
                return False
            except zmq.ZMQError as exc:
                raise transport_error(exc, self.closed) from exc
            if await self._wait_marker(token, min(FLUSH_RETRY, max(remaining, 0))):
                return True
            if remaining <= FLUSH_RETRY:
                return False

    async def _wait_marker(self, token: bytes, timeout: float) -> bool:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[token] = waiter
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(token, None)

    def _flushed(self, token: bytes) -> None:
        waiter = self._waiters.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stats(self) -> dict[str, int]:
        """Counters, as :meth:`Bus.stats`."""
        return self._core.stats()

    async def close(self) -> None:
        """Stop the reader, end iterators, let queued messages leave (1 s at most).

        Safe twice, and from a handler or an ``on_gap`` callback.
        """
        if self.closed:
            return
        self.closed = True
        reader, self._reader = self._reader, None
        # close() from a handler runs in the reader itself: it cannot wait for itself.
        in_reader = reader is not None and reader is asyncio.current_task()
        if reader is not None and not in_reader:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        for subscription in list(self._subscriptions):
            subscription._end()
        self._subscriptions.clear()
        try:
            if self._core.batch is not None:
                try:
                    await self._send_locked(self._core.batch_frame(), PUBLISH_LINGER_MS / 1000)
                    self._core.batch_sent()
                except PublishTimeout:
                    log.warning(
                        "closing: %d held messages could not reach the bridge",
                        len(self._core.batch.payloads),
                    )
            self._sub.close(linger=0)
            self._push.close()
            # term() waits for the PUSH linger; keep the loop free meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, self._context.term)
        except zmq.ZMQError:  # closing anyway: nothing left to tell the caller
            log.debug("closing the bus", exc_info=True)
        finally:
            if reader is not None and in_reader:
                reader.cancel()  # it ends once the handler returns

    async def __aenter__(self) -> AsyncBus:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals ------------------------------------------------------------------

    def _add(self, subscriber: Subscriber) -> None:
        self._core.add(subscriber)
        self._schedule_outbox()

    def _unsubscribe(self, subscription: AsyncSubscription) -> None:
        self._subscriptions.pop(subscription, None)
        if self._core.remove(subscription.subscriber) and not self.closed:
            self._schedule_outbox()

    def _schedule_outbox(self) -> None:
        if not self._outbox_scheduled and self._reader is not None:
            self._outbox_scheduled = True
            self._reader.get_loop().call_soon(self._send_outbox)

    async def _publish(self, prepared: Prepared) -> None:
        """Send one message now, or hold it in a batch when publishes come in a
        burst; a held batch leaves when full, before any other frame, or on the
        loop's next turn (a publishing task that never yields fills it first;
        :meth:`Bus._publish` has a receiver thread that sends it when due)."""
        async with self._send_lock:  # uncontended: no wait, no loop turn
            try:
                await self._publish_locked(prepared)
            finally:
                # As in Bus: the gap to the next publish counts from here.
                self._core.last_publish = time.monotonic()

    async def _publish_locked(self, prepared: Prepared) -> None:
        core = self._core
        burst = core.in_burst(time.monotonic())
        batch = core.batch
        if batch is not None:
            held = core.hold(prepared)
            if held:
                if held == 2 or not burst:  # full, or the burst is over
                    self._send_batch_nowait()
                return
            await self._send_locked(core.batch_frame())  # raises: not taken
            core.batch_sent()
        if burst:
            core.hold(prepared)
            self._schedule_flush()
            return
        await self._send_locked(core.single_frame(prepared))
        core.commit(prepared)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_held)

    def _flush_held(self) -> None:
        self._flush_scheduled = False
        if self._core.batch is None or self.closed:
            return
        if self._send_lock.locked() or not self._send_batch_nowait():
            # A send is waiting for room, or the pipe is full: try again shortly.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(0.002, self._flush_held)

    def _send_batch_nowait(self) -> bool:
        try:
            self._push_now.send(self._core.batch_frame(), zmq.NOBLOCK)
        except zmq.Again:
            self._schedule_flush()
            return False
        self._core.batch_sent()
        return True

    async def _send(self, frame: bytes, timeout: float | None = None) -> None:
        """Send a frame made elsewhere (a flush marker), after any held batch."""
        async with self._send_lock:
            if self._core.batch is not None:
                await self._send_locked(self._core.batch_frame(), timeout)
                self._core.batch_sent()
            await self._send_locked(frame, timeout)

    async def _send_locked(self, frame: bytes, timeout: float | None = None) -> None:
        try:
            self._push_now.send(frame, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        if timeout is None:
            timeout = self._core.options.publish_timeout
        try:
            await asyncio.wait_for(self._push.send(frame), timeout)
        except TimeoutError:
            raise PublishTimeout(
                f"the bridge at {self._core.options.paths.pull} took no message for "
                f"{timeout}s and {self._core.options.send_queue} are queued; "
                "is the bridge running?"
            ) from None

    async def _read_loop(self) -> None:
        try:
            await self._read_frames()
        except zmq.ZMQError as exc:
            if self.closed:  # closed from a handler: the sockets went first
                return
            # The transport failed: end the iterators with the error, not silence.
            log.error("the bus stopped receiving: %s", exc)
            error = transport_error(exc, False)
            for subscription in list(self._subscriptions):
                subscription._fail(error)
                subscription._end()

    async def _read_frames(self) -> None:
        sub = self._sub
        sub_now = self._sub_now
        core = self._core
        while True:
            if core.loads:  # while history loads, wake now and then to ask again
                try:
                    frames: list[bytes] = [await asyncio.wait_for(sub.recv(), 0.5)]
                except TimeoutError:
                    frames = []
            else:
                frames = [await sub.recv()]
            for _ in range(_RECEIVE_BATCH - 1):
                try:
                    frames.append(sub_now.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            for frame in frames:
                events = core.accept(frame)
                if events is not None:
                    for subscriber in core.route(events):
                        if subscriber.sink_many is not None:
                            subscriber.sink_many(events, len(frame))
                        else:
                            for event in events:
                                await _call(subscriber.sink, event)
            if core.loads or core.finished:
                core.check_history()
                await self._deliver_completed()
            if core.dropping:
                core.report_drops()
            if core.outbox_pending:
                self._send_outbox()

    def _send_outbox(self) -> None:
        self._outbox_scheduled = False
        if self.closed:
            return
        for request in self._core.take_outbox():
            with contextlib.suppress(zmq.Again):
                self._sub_now.send(request, zmq.NOBLOCK)

    async def _deliver_completed(self) -> None:
        for subscriber, events, error in self._core.take_completed():
            if error is not None:
                if subscriber.fail is not None:
                    subscriber.fail(error)
                else:
                    log.warning("history for %s: %s", subscriber.pattern.text, error)
            for event in events:
                await _call(subscriber.sink, event)


async def _call(sink: Callable[[Event], Any], event: Event) -> None:
    result = sink(event)
    if inspect.isawaitable(result):
        await result


def _guarded(handler: Callable[[Event], Any]) -> Callable[[Event], Awaitable[None]]:
    """Run a handler (sync or async); its exception is logged, never ends the reader."""

    async def call(event: Event) -> None:
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("handler %r failed on %r", handler, event)

    return call
