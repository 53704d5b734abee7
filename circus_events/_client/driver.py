"""What :class:`~circus_events.Bus` and :class:`~circus_events.AsyncBus` do
the same way around their I/O: construction, bookkeeping, errors.

Each client subclasses :class:`BusBase` and :class:`SubscriptionBase` and
adds only what waits (a thread, or the event loop): opening its sockets,
sending, receiving, and running the plans of :mod:`.plans`. A public method
whose logic does not wait is written here once.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

import zmq

from .._event import Event, Gap
from .._exceptions import (
    ArgumentError,
    BridgeError,
    ConfigError,
    ProtocolError,
    PublishTimeout,
    UsageError,
)
from ..protocol import REPLAY_TOKEN_BYTES, Codec, Pattern
from ..protocol.lease import parse_leader_reply
from .core import STATS_DOC, BusCore
from .leadership import LeadershipBase, check_leader_args
from .limits import (
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SEND_QUEUE,
    DEFAULT_SEND_QUEUE_BYTES,
)
from .options import ClientOptions, compile_pattern, history_args
from .queues import QueueBound, Subscriber
from .transport import transport_error

__all__ = ["END", "BusBase", "SubscriptionBase", "new_epoch", "new_token"]

log = logging.getLogger("circus_events.client")

Handler = TypeVar("Handler", bound=Callable[[Event], Any])
Sub = TypeVar("Sub", bound="SubscriptionBase")
W = TypeVar("W")
#: Queued after a subscription's last event: its reader stops there.
END: Final = object()
#: Bytes of a sync or flush marker token (random: two waits never share one).
MARKER_TOKEN_BYTES: Final = 8


def new_epoch() -> int:
    """This process's identity starts now (microseconds since the Unix epoch)."""
    return time.time_ns() // 1000


def new_token() -> bytes:
    """A random marker token (sync, flush)."""
    return secrets.token_bytes(MARKER_TOKEN_BYTES)


def history_token() -> bytes:
    """A random history request token (printable: the bridge echoes it)."""
    return secrets.token_hex(REPLAY_TOKEN_BYTES // 2).encode()


class SubscriptionBase(abc.ABC):
    """An iterator over the events matching one pattern; its queue is bounded
    (:class:`QueueBound`): when full, this subscription alone drops what
    comes, and ``on_gap`` is told (a ``queue_full`` gap)."""

    _subscriber: Subscriber

    def __init__(self, bus: BusBase[Any], pattern: Pattern, bound: QueueBound) -> None:
        self.pattern = pattern
        self._bus = bus
        self._bound = bound
        self.closed = False

    @property
    def dropped(self) -> int:
        """Events this subscription dropped because its queue was full."""
        return self._bound.dropped

    @abc.abstractmethod
    def _put_many(self, events: list[Event], nbytes: int) -> None:
        """Queue what fits of one frame's events (never waits); drop the rest."""

    def _put(self, event: Event) -> None:
        self._put_many([event], len(event.payload))

    @abc.abstractmethod
    def _end(self) -> None:
        """Closed: the reader stops after what is queued."""

    def close(self) -> None:
        """Stop receiving; iteration ends after what is already queued. Safe
        twice, from any thread, and after the bus is closed."""
        if not self.closed:
            self._end()
            self._bus._unsubscribe(self)


class BusBase(abc.ABC, Generic[Sub]):
    """What both buses do the same way (their docstrings say what they are)."""

    _context: zmq.Context[Any]
    #: The PUSH socket to the bridge, as a plain socket (sends that never wait).
    _push_now: zmq.Socket[bytes]
    #: What ``subscribe()`` returns.
    _subscription_type: type[Sub]

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
        send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES,
        max_delay: float | None = None,
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
            send_queue_bytes=send_queue_bytes,
            max_delay=max_delay,
            max_message_bytes=max_message_bytes,
        )
        if on_gap is not None and not callable(on_gap):
            raise ConfigError("on_gap", f"must be a function or None, not {on_gap!r}")
        self._core = BusCore(options, on_gap, new_epoch())
        self._core.wall_clock = time.time
        self._core.on_flush = self._flushed
        self._core.on_leader = self._leader_message
        #: Candidacies (``leader()``) by (scope, role).
        self._leaderships: dict[tuple[str, str], LeadershipBase] = {}
        self.closed = False
        #: Open subscriptions (a dict: closing one forgets it in O(1)).
        self._subscriptions: dict[Sub, None] = {}
        #: What waits for each sync or flush marker (an event with ``set()``).
        self._waiters: dict[bytes, Any] = {}
        try:
            self._open_io()
        except BaseException as exc:
            # Whatever failed, close what was opened: a context left behind
            # would hang the next garbage collection (its term() waits).
            self.closed = True
            context = getattr(self, "_context", None)
            if context is not None:
                context.destroy(linger=0)
            if isinstance(exc, zmq.ZMQError):
                raise BridgeError(
                    f"cannot open the sockets to the bridge in {options.paths.directory}: {exc}"
                ) from exc
            raise

    @abc.abstractmethod
    def _open_io(self) -> None:
        """Open the context and the sockets (``_context`` first)."""

    @abc.abstractmethod
    def _unsubscribe(self, subscription: Sub) -> None:
        """Forget a closed subscription."""

    @abc.abstractmethod
    def _ready(self) -> None:
        """Raise if the bus cannot take a subscription now (closed, no loop...)."""

    @abc.abstractmethod
    def _register(
        self, subscriber: Subscriber, wanted: tuple[int | None, int | None] | None
    ) -> None:
        """Add a handler's subscriber, with the history it wants."""

    @abc.abstractmethod
    def _guard(self, handler: Callable[[Event], Any]) -> Callable[[Event], Any]:
        """The handler as the receiving side calls it: its errors logged."""

    @property
    def worker(self) -> str:
        """This worker's id (the target of ``send_to``)."""
        return self._core.options.worker

    @property
    def host(self) -> str:
        return self._core.options.host

    def stats(self) -> dict[str, int]:
        return self._core.stats()

    stats.__doc__ = STATS_DOC

    def on(self, pattern: str, *, history: int | None = None) -> Callable[[Handler], Handler]:
        """Decorator: call the function for each matching event (:class:`Bus`:
        on its receiver thread; :class:`AsyncBus`: on the loop, awaited if it
        is a coroutine function), in the order sent on each channel.

        ``history=N``: first the newest N events Redis kept (stream mode).
        """
        compiled = compile_pattern(pattern)
        wanted = history_args(history, None)

        def register(handler: Handler) -> Handler:
            if not callable(handler):
                raise ArgumentError("handler", f"must be a function, not {handler!r}")
            self._ready()
            self._register(Subscriber(compiled, self._guard(handler)), wanted)
            return handler

        return register

    def subscribe(
        self,
        pattern: str,
        *,
        history: int | None = None,
        since: float | None = None,
        queue_size: int | None = None,
        queue_max_bytes: int | None = None,
    ) -> Sub:
        """Iterate (``async for`` on an AsyncBus) over events whose channel
        matches ``pattern`` (glob, like PSUBSCRIBE).

        With ``history=N`` (and/or ``since``, a Unix time), the newest N
        matching events kept by Redis (stream mode) come first, then live
        ones, with no duplicate and no hole between them. If the bridge cannot
        give history, the first ``get()`` raises :class:`BridgeError`; live
        events follow.

        The subscription queues at most ``queue_size`` events and
        ``queue_max_bytes`` bytes (default: the bus's); past that it drops
        what comes, for itself alone, and ``on_gap`` gets a ``queue_full``
        :class:`Gap` with its pattern. History counts too: ask for no more
        than the queue holds. ``close()`` on the subscription frees it.
        """
        self._ready()
        compiled = compile_pattern(pattern)
        bound = self._core.new_bound(compiled, queue_size, queue_max_bytes)
        wanted = history_args(history, since)
        subscription = self._subscription_type(self, compiled, bound)
        self._subscriptions[subscription] = None
        self._register(subscription._subscriber, wanted)
        return subscription

    def _load_history(
        self, subscriber: Subscriber, wanted: tuple[int | None, int | None] | None
    ) -> None:
        """Ask for a subscriber's history, if it wants some (it is registered)."""
        if wanted is not None:
            limit, since_ms = wanted
            self._core.add_history(subscriber, limit, since_ms, history_token(), time.monotonic())

    @contextlib.contextmanager
    def _markers(
        self, tokens: tuple[bytes, ...], make: Callable[[], W]
    ) -> Iterator[dict[bytes, W]]:
        """While a plan runs: a waiter for each of its marker tokens (``make()``,
        set by :meth:`_flushed`), and ZeroMQ errors as ours."""
        waiters = {token: make() for token in tokens}
        self._waiters.update(waiters)
        try:
            yield waiters
        except zmq.ZMQError as exc:
            raise transport_error(exc, self.closed) from exc
        finally:
            for token in tokens:
                self._waiters.pop(token, None)

    def _flushed(self, token: bytes) -> None:
        """A sync, flush or credit marker came back (on the receiving side)."""
        if self._core.credit.marker_back(token):
            self._credit_returned()
            return
        waiter = self._waiters.get(token)
        if waiter is not None:
            waiter.set()

    def _leader_message(self, payload: bytes) -> None:
        """A leader message from the bridge (on the receiving side)."""
        try:
            reply = parse_leader_reply(payload)
        except ProtocolError as exc:
            log.warning("dropped a leader message that does not parse: %s", exc)
            return
        leadership = self._leaderships.get((reply.scope, reply.role))
        if leadership is not None:
            leadership._on_reply(reply)

    def _leader_args(self, role: object, ttl: object, scope: object) -> tuple[str, float, str]:
        """Checked ``leader()`` arguments; UsageError if this bus already runs for it."""
        checked = check_leader_args(role, ttl, scope)
        if (checked[2], checked[0]) in self._leaderships:
            raise UsageError(
                f"this bus is already a candidate for {checked[0]!r} ({checked[2]}): "
                "release that handle first"
            )
        return checked

    def _leadership_done(self, leadership: LeadershipBase) -> None:
        key = (leadership.scope, leadership.role)
        if self._leaderships.get(key) is leadership:
            del self._leaderships[key]

    def _send_timeout(self, timeout: float | None) -> float:
        """How long a send may wait for room: ``timeout``, else publish_timeout."""
        return self._core.options.publish_timeout if timeout is None else timeout

    def _timed_out(self, timeout: float) -> PublishTimeout:
        options = self._core.options
        return PublishTimeout(
            f"the bridge at {options.paths.pull} took no message for "
            f"{timeout}s and {options.send_queue} are queued; is the bridge running?"
        )

    def _credit_timed_out(self, timeout: float) -> PublishTimeout:
        options = self._core.options
        return PublishTimeout(
            f"the bridge at {options.paths.pull} has not read {self._core.credit.unread} "
            f"bytes sent (send_queue_bytes={options.send_queue_bytes}) for {timeout}s; "
            "is the bridge running?"
        )

    @abc.abstractmethod
    def _credit_returned(self) -> None:
        """A credit marker came back: wake publishes waiting for credit."""

    def _count_sent(self, size: int) -> None:
        """Count a frame that left (under the send lock); a credit marker
        follows when one is due."""
        credit = self._core.credit
        credit.sent += size
        if credit.sent >= credit.next_mark:
            self._send_credit_marker()

    def _send_credit_marker(self) -> None:
        """Send a credit marker now, under the send lock; if the pipe is full,
        after the next frame (or the next look of a waiting publish)."""
        core = self._core
        marker = core.credit_frame(time.monotonic(), time.time())
        try:
            self._push_now.send(marker, zmq.NOBLOCK)
        except zmq.Again:
            core.credit.marker_lost()
            return
        core.credit.sent += len(marker)

    def _end_subscriptions(self) -> None:
        for subscription in list(self._subscriptions):
            subscription._end()
        self._subscriptions.clear()

    def _lost_on_close(self) -> None:
        batch = self._core.batch
        count = 0 if batch is None else len(batch.payloads)
        log.warning("closing: %d held messages could not reach the bridge", count)
