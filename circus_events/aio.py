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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Final

import zmq
import zmq.asyncio

from ._client.aio_calls import call as _call
from ._client.aio_calls import guarded as _guarded
from ._client.aio_calls import within as _within
from ._client.batch import FULL, Prepared, Step
from ._client.driver import END, BusBase, SubscriptionBase, new_token
from ._client.leadership import AsyncLeadership
from ._client.limits import (
    CONFIRM_POLL,
    DEFAULT_WAIT_TIMEOUT,
    HISTORY_POLL,
    HOT_GAP,
    PUBLISH_LINGER,
    RECEIVE_BATCH,
    RECEIVER_JOIN_TIMEOUT,
)
from ._client.options import Scope, check_timeout, or_forever
from ._client.plans import (
    ASK_CREDIT,
    NOW,
    AskSync,
    AwaitConfirmed,
    AwaitCredit,
    AwaitMarker,
    Plan,
    SendMarker,
    advance,
    credit_plan,
    flush_plan,
    sync_plan,
)
from ._client.queues import Failure, QueueBound, Subscriber
from ._client.transport import connect_push, connect_sub, send_up, transport_error
from ._event import Event
from ._exceptions import BusClosed, PublishTimeout, ReceiveTimeout, UsageError
from .protocol import Pattern

__all__ = ["AsyncBus", "AsyncSubscription"]

log = logging.getLogger("circus_events.client")

_BATCH_FIRST: Final = Step.BATCH_FIRST
_SEND_ALONE: Final = Step.SEND_ALONE
_SEND_BATCH: Final = Step.SEND_BATCH
_OPENED: Final = Step.OPENED
_FULL: Final = FULL
_monotonic = time.monotonic
#: A held batch the pipe had no room for is tried again this soon (s).
_HELD_RETRY: Final = 0.002


class AsyncSubscription(SubscriptionBase):
    """An async iterator over the events matching one pattern.

    Its queue is bounded (:class:`QueueBound`, as :class:`Subscription`'s):
    when full, this subscription alone drops what comes, and ``on_gap`` is
    told (a ``queue_full`` gap).
    """

    def __init__(self, bus: AsyncBus, pattern: Pattern, bound: QueueBound) -> None:
        super().__init__(bus, pattern, bound)
        # Unbounded as a Queue: the QueueBound decides what goes in.
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._subscriber = Subscriber(
            pattern, self._put, fail=self._fail, sink_many=self._put_many, bound=bound
        )

    @property
    def subscriber(self) -> Subscriber:
        """Its registration with the bus core (the attribute's name before 13)."""
        return self._subscriber

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
        if item is END:
            queue.put_nowait(END)
            raise BusClosed("subscription closed")
        event: Event = item
        return event

    def get_nowait(self) -> Event | None:
        """The next event if one is queued now, else None (also once closed:
        ``get`` says so); raises what ``get`` raises for a failed subscription."""
        queue = self._queue
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if isinstance(item, Failure):
            raise item.error
        if item is END:
            queue.put_nowait(END)
            return None
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

    def _fail(self, error: Exception) -> None:
        self._queue.put_nowait(Failure(error))

    def _end(self) -> None:
        self.closed = True
        self._queue.put_nowait(END)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncBus(BusBase[AsyncSubscription]):
    """A worker's connection to its host's bridge (asyncio). Same options as
    :class:`~circus_events.Bus`; a subscription is an async iterator."""

    _subscription_type = AsyncSubscription

    def _open_io(self) -> None:
        #: The subscription changes wait for the loop's next turn (a subscribe
        #: and a close within one turn send nothing).
        self._outbox_scheduled = False
        self._reader: asyncio.Task[None] | None = None
        #: True while the reader runs handlers (close() waits for them).
        self._delivering = False
        #: Held while a send waits for room, so that frames leave in order.
        self._send_lock = asyncio.Lock()
        #: Set when a credit marker comes back (publishes waiting for credit).
        self._credit_back = asyncio.Event()
        self._flush_scheduled = False
        #: Resends under way (a hello), kept referenced until done.
        self._resends: set[asyncio.Task[None]] = set()
        self._core.on_hello = self._hello
        options = self._core.options
        self._context = zmq.asyncio.Context()
        self._push = self._context.socket(zmq.PUSH)
        self._sub = self._context.socket(zmq.XSUB)
        # Synchronous views of the same sockets for the non-blocking fast paths:
        # an asyncio socket returns a future even for NOBLOCK calls.
        self._push_now: zmq.Socket[bytes] = zmq.Socket.shadow(self._push.underlying)
        self._sub_now: zmq.Socket[bytes] = zmq.Socket.shadow(self._sub.underlying)
        connect_push(self._push_now, options)
        connect_sub(self._sub_now, options, [self._core.inbox])

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
        core = self._core
        now = _monotonic()
        # The hot path of a burst, as in Bus.publish: the message joins the
        # open batch. Not while a send waits for room (it may be sending it).
        if now - core.last_publish < HOT_GAP and not self._send_lock.locked():
            joined = core.join(channel, data, scope, now)
            if joined:
                core.last_publish = now
                if joined is _FULL:
                    self._send_batch_nowait()
                    core.last_publish = _monotonic()
                return
        if scope != "process":
            await self._publish(core.prepare(channel, data, scope))
            return
        event = core.local_event(channel, data, time.time())
        for subscriber in core.route([event]):
            await _call(subscriber.sink, event)
        if core.dropping:
            core.report_drops()

    async def send_to(self, worker: str, channel: str, data: Any) -> None:
        """Send ``data`` on ``channel`` to one worker, on any host."""
        if self.closed:
            raise BusClosed("the bus is closed")
        await self._publish(self._core.prepare(channel, data, "cluster", target=worker))

    async def sync(self, timeout: float = DEFAULT_WAIT_TIMEOUT) -> bool:
        """Wait until the bridge has applied every subscription made so far."""
        seconds = or_forever(check_timeout("timeout", timeout))
        self._ensure_reader()
        token = new_token()
        return await self._run(sync_plan(token, seconds), token)

    async def flush(self, timeout: float = DEFAULT_WAIT_TIMEOUT) -> bool:
        """Wait until the bridge has taken everything published so far and,
        in stream mode, confirmed that Redis has it (see :meth:`Bus.flush`)."""
        seconds = or_forever(check_timeout("timeout", timeout))
        self._ensure_reader()
        sync_token, token = new_token(), new_token()
        return await self._run(flush_plan(sync_token, token, seconds), sync_token, token)

    async def _run(self, plan: Plan, *tokens: bytes) -> bool:
        """Carry out a plan of :mod:`circus_events._client.plans` on the loop."""
        with self._markers(tokens, asyncio.Event) as markers:
            step = advance(plan, None)
            while not isinstance(step, bool):
                answer: Any = None
                if isinstance(step, str):  # NOW
                    answer = time.monotonic()
                elif isinstance(step, AskSync):
                    self._send_outbox()  # the subscriptions first: the request covers them
                    send_up(self._sub_now, [self._core.sync_request(step.token)])
                elif isinstance(step, AwaitConfirmed):
                    answer = await self._all_confirmed(step.timeout)
                elif isinstance(step, AwaitMarker):
                    answer = await _within(markers[step.token].wait(), step.timeout)
                else:
                    assert isinstance(step, SendMarker)  # sync and flush plans ask no credit
                    frame = self._core.flush_frame(step.token, time.time())
                    answer = await _within(self._send(frame, step.timeout), None)
                step = advance(plan, answer)
            return step

    def leader(self, role: str, *, ttl: float = 10.0, scope: str = "cluster") -> AsyncLeadership:
        """Run for leader of ``role`` (see :meth:`Bus.leader
        <circus_events.Bus.leader>`); call it from the bus's event loop.
        ``await handle.wait()``, ``await handle.release()``, ``async with``."""
        role, ttl, scope = self._leader_args(role, ttl, scope)
        self._ensure_reader()
        leadership = AsyncLeadership(self, role, ttl, scope)
        self._leaderships[(scope, role)] = leadership
        leadership._start()
        return leadership

    def _send_up(self, frame: bytes) -> None:
        """Send a request frame up the subscription socket, now."""
        if self.closed:
            raise BusClosed("the bus is closed")
        self._core.outbox.append(frame)
        self._send_outbox()

    async def close(self) -> None:
        """Stop the reader, end iterators, let queued messages leave.

        Waits for a handler still running (up to RECEIVER_JOIN_TIMEOUT, 5 s,
        then it is cancelled), then up to PUBLISH_LINGER (1 s) for the held
        batch and as long again for what is queued. Safe twice, and from a
        handler or an ``on_gap`` callback.
        """
        if self.closed:
            return
        for leadership in list(self._leaderships.values()):
            await leadership.release()  # type: ignore[attr-defined]  # an AsyncLeadership
        self.closed = True
        reader, self._reader = self._reader, None
        # close() from a handler runs in the reader itself: it cannot wait for itself.
        in_reader = reader is not None and reader is asyncio.current_task()
        if reader is not None and not in_reader:
            if self._delivering:  # the reader returns once the running handler does
                await asyncio.wait((reader,), timeout=RECEIVER_JOIN_TIMEOUT)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._end_subscriptions()
        try:
            if self._core.batch is not None:
                try:
                    await self._send_locked(self._core.batch_frame(), PUBLISH_LINGER)
                    self._core.batch_sent()
                except PublishTimeout:
                    self._lost_on_close()
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

    def _ready(self) -> None:
        self._ensure_reader()

    def _register(
        self, subscriber: Subscriber, wanted: tuple[int | None, int | None] | None
    ) -> None:
        self._core.add(subscriber)
        if wanted is None:
            self._schedule_outbox()
        else:
            self._load_history(subscriber, wanted)
            self._send_outbox()

    def _guard(self, handler: Callable[[Event], Any]) -> Callable[[Event], Awaitable[None]]:
        return _guarded(handler)

    def _unsubscribe(self, subscription: AsyncSubscription) -> None:
        self._subscriptions.pop(subscription, None)
        if self._core.remove(subscription._subscriber) and not self.closed:
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
        if self._core.credit.exhausted and asyncio.current_task() is not self._reader:
            # The reader task (a handler) could not take credit back while it waits.
            await self._wait_for_credit()
        async with self._send_lock:  # uncontended: no wait, no loop turn
            try:
                await self._publish_locked(prepared)
            except zmq.ZMQError as exc:  # the sockets were closed under us
                raise transport_error(exc, self.closed) from exc
            finally:
                # As in Bus: the gap to the next publish counts from here.
                self._core.last_publish = time.monotonic()

    async def _publish_locked(self, prepared: Prepared) -> None:
        core = self._core
        burst = core.in_burst(time.monotonic())
        wall = time.time()
        step = core.place(prepared, burst, wall)
        if step is _BATCH_FIRST:
            frame = core.batch_frame()
            await self._send_locked(frame)  # raises: this one is not taken
            core.batch_sent(frame)
            step = core.place(prepared, burst, wall)
        if step is _SEND_ALONE:
            frame = core.single_frame(prepared, wall)
            await self._send_locked(frame)
            core.commit(prepared, frame)
        elif step is _SEND_BATCH:
            self._send_batch_nowait()
        elif step is _OPENED:
            self._schedule_flush()

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
            asyncio.get_running_loop().call_later(_HELD_RETRY, self._flush_held)

    def _send_batch_nowait(self) -> bool:
        frame = self._core.batch_frame()
        try:
            self._push_now.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._schedule_flush()
            return False
        self._count_sent(len(frame))
        self._core.batch_sent(frame)
        return True

    async def _wait_for_credit(self) -> None:
        """Wait until the bridge has read enough of what was sent (``credit_plan``)."""
        self._ensure_reader()  # credit comes back through the reader
        credit = self._core.credit
        seconds = self._send_timeout(None)
        plan = credit_plan(credit, seconds)
        step = advance(plan, None)
        while not isinstance(step, bool):
            if self.closed:
                raise BusClosed("the bus is closed")
            answer = time.monotonic() if step is NOW else None
            if step is ASK_CREDIT and not self._send_lock.locked():  # else a send waits: later
                self._send_credit_marker()
            elif isinstance(step, AwaitCredit):
                self._credit_back.clear()
                if credit.exhausted:
                    await _within(self._credit_back.wait(), step.timeout)
            step = advance(plan, answer)
        if not step:
            raise self._credit_timed_out(seconds)

    def _credit_returned(self) -> None:
        self._credit_back.set()

    async def _send(self, frame: bytes, timeout: float | None = None) -> None:
        """Send a frame made elsewhere (a flush marker), after any held batch."""
        async with self._send_lock:
            if self._core.batch is not None:
                batch = self._core.batch_frame()
                await self._send_locked(batch, timeout)
                self._core.batch_sent(batch)
            await self._send_locked(frame, timeout)

    def _hello(self, kind: int, instance: bytes) -> None:
        """A bridge said hello: resume with it and send again what it has not
        confirmed, before anything else (a task: sends may wait for room)."""
        task = asyncio.get_running_loop().create_task(self._resend(kind, instance))
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)

    async def _resend(self, kind: int, instance: bytes) -> None:
        try:
            async with self._send_lock:
                for frame in self._core.hello(kind, instance, time.time()):
                    await self._send_locked(frame)
                if self._core.credit.exhausted:  # markers sent to the old bridge died with it
                    self._send_credit_marker()
        except (PublishTimeout, zmq.ZMQError) as exc:
            # Kept still: the bridge asks again when it drops what follows.
            log.warning("could not send again what the bridge has not confirmed: %s", exc)

    async def _all_confirmed(self, timeout: float) -> bool:
        """Wait at most ``timeout`` until the bridge confirmed everything sent."""
        deadline = time.monotonic() + timeout
        unconfirmed = self._core.unconfirmed
        while True:
            unconfirmed.apply()
            if not unconfirmed.messages:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(CONFIRM_POLL, left))

    async def _send_locked(self, frame: bytes, timeout: float | None = None) -> None:
        """Send now if the pipe has room, else wait for it (PublishTimeout)."""
        try:
            self._push_now.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            seconds = self._send_timeout(timeout)
            try:
                await asyncio.wait_for(self._push.send(frame), seconds)
            except TimeoutError:
                raise self._timed_out(seconds) from None
            except asyncio.CancelledError:
                # close() closed the socket under us (pyzmq cancels the send):
                # that is BusClosed, unless this task itself is being cancelled.
                task = asyncio.current_task()
                if self.closed and task is not None and not task.cancelling():
                    raise BusClosed("the bus is closed") from None
                raise
        self._count_sent(len(frame))

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
        deliver = core.deliver
        while not self.closed:
            if core.loads:  # while history loads, wake now and then to ask again
                try:
                    frames: list[bytes] = [await asyncio.wait_for(sub.recv(), HISTORY_POLL)]
                except TimeoutError:
                    frames = []
            else:
                frames = [await sub.recv()]
            for _ in range(RECEIVE_BATCH - 1):
                try:
                    frames.append(sub_now.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            self._delivering = True
            for frame in frames:
                if self.closed:
                    return
                handled = deliver(frame)
                if handled is not None:  # handlers to call (or await), in order
                    events, handlers = handled
                    for handler in handlers:
                        for event in events:
                            await handler.sink(event)
            if core.loads or core.finished or core.dropping:
                for subscriber, replayed in core.settle(time.monotonic()):
                    for event in replayed:
                        await _call(subscriber.sink, event)
            if core.outbox_pending:
                self._send_outbox()
            self._delivering = False

    def _send_outbox(self) -> None:
        self._outbox_scheduled = False
        if not self.closed:
            send_up(self._sub_now, self._core.take_outbox())
            # A send on the shadow socket can take the edge of ZeroMQ's FD: frames
            # that arrived meanwhile would wait unseen by the pending recv.
            wake = getattr(self._sub, "_schedule_remaining_events", None)
            if wake is not None:
                wake()
