"""What :class:`Bus` and :class:`AsyncBus` share: options, encoding, filtering.

The two clients differ only in how they wait (a thread or an event loop).
Everything else lives here and does no I/O: building frames with per-channel
sequence numbers, echo suppression, gap and duplicate tracking, and the
reference-counted ZeroMQ topics behind the subscriptions.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import functools
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple

import zmq

from ._config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_NAMESPACE,
    BridgeConfig,
    SocketPaths,
    default_dir,
    default_host,
    environ_options,
    socket_paths,
)
from ._event import GAP_QUEUE_FULL, Event, Gap, RawEvent
from ._exceptions import (
    ArgumentError,
    BridgeError,
    BusClosed,
    ChannelError,
    CircusEventsError,
    ConfigError,
    MessageTooLarge,
    ProtocolError,
)
from ._sockdir import check_client_dir
from .protocol import (
    DUPLICATE,
    FLAG_HOST_ONLY,
    FLAG_NOTICE,
    FLAG_REPLAY,
    FLUSH_CHANNEL,
    HEADER,
    HISTORY_END_CHANNEL,
    REPLAY_TOKEN_BYTES,
    SYNC_CHANNEL,
    SYNC_REQUEST,
    Codec,
    Envelope,
    Pattern,
    SequenceTracker,
    build_history_request,
    channel_topic,
    decode_messages,
    encode_batch,
    encode_frame,
    encode_payload,
    inbox_channel,
    inbox_topic,
    parse_codec,
    validate_channel,
    validate_worker_id,
)

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_COUNT",
    "BATCH_MAX_WAIT",
    "BURST_MIN",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_QUEUE_MAX_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "EVENT_OVERHEAD_BYTES",
    "HOT_GAP",
    "MAX_TIMEOUT",
    "BusCore",
    "ClientOptions",
    "Failure",
    "HistoryLoad",
    "OpenBatch",
    "Prepared",
    "QueueBound",
    "Scope",
    "check_timeout",
    "compile_pattern",
    "history_args",
    "or_forever",
    "transport_error",
]

log = logging.getLogger("circus_events.client")

Scope = Literal["process", "host", "cluster"]

_SCOPES: Final = ("process", "host", "cluster")
#: How long ``publish`` waits for room in the queue to the bridge before raising.
DEFAULT_PUBLISH_TIMEOUT: Final = 5.0
#: The longest timeout a call accepts (seconds: a year); None waits forever.
#: Past it, thread and timer waits overflow the platform's time types.
MAX_TIMEOUT: Final = 365 * 86_400.0
#: Messages queued towards the bridge (while it is down or slow) before
#: ``publish`` waits. Frames, each one message or a batch of at most
#: BATCH_MAX_BYTES: 20k x ~150 B is 3 MB, 20k full batches 320 MB.
DEFAULT_SEND_QUEUE: Final = 20_000
#: Events buffered per subscription iterator. Past it (or past
#: DEFAULT_QUEUE_MAX_BYTES) that subscription alone drops what comes and is
#: told (a ``queue_full`` gap): a forgotten iterator never stalls the
#: handlers and the other subscriptions of its bus. 100k events of 100 bytes
#: are ~29 MB, under the byte bound: a reader that falls behind in a burst
#: has room (10k, the old figure, lost events in the fan-out benchmark on a
#: loaded machine once readers no longer held up the receiver).
DEFAULT_QUEUE_SIZE: Final = 100_000
#: Bytes buffered per subscription iterator: each event counts as its share
#: of the frame it came in (payload and a small header) plus
#: EVENT_OVERHEAD_BYTES, so this bounds what a forgotten subscription costs.
#: An empty queue always takes one event, however large.
DEFAULT_QUEUE_MAX_BYTES: Final = 32 * 1024 * 1024
#: What a queued event costs besides its payload bytes (the Event, the
#: payload's bytes object, the queue slot): tracemalloc measured 277 B an
#: event for 100-byte payloads taken from a batch.
EVENT_OVERHEAD_BYTES: Final = 176
#: Channel names remembered as valid, so publish validates each once.
_MAX_CACHED_CHANNELS: Final = 4096
#: Seconds between repeats of an unanswered sync request.
SYNC_RETRY: Final = 0.2
#: Seconds before an unanswered flush marker is sent again.
FLUSH_RETRY: Final = 1.0
#: Seconds of silence before a history request is sent again, and in all.
HISTORY_RETRY: Final = 3.0
HISTORY_TIMEOUT: Final = 30.0
#: Messages ZeroMQ queues for this worker before the bridge drops (a gap).
RECEIVE_HWM: Final = 20_000


#: A publish this soon (seconds) after the previous one continues a burst...
#: At 5,000 msg/s (200 us apart) every message still goes on its own at once.
HOT_GAP: Final = 20e-6
#: ...and once BURST_MIN publishes have followed the first, messages are held to
#: travel in batches. A short catch-up (a paced publisher woken late sends a
#: few at once) still goes message by message: holding those cost 2-3x in p99.
BURST_MIN: Final = 8
#: A burst that resumes within this many seconds of the last batch (the
#: publisher was only preempted) batches again at once: sending BURST_MIN
#: single frames after every preemption cost a tenth of the throughput.
BURST_MEMORY: Final = 0.01
#: Bounds of one batch frame (the receiver's work per frame, and latency).
BATCH_MAX_COUNT: Final = 256
BATCH_MAX_BYTES: Final = 16384
#: A batch still filling (its publisher goes on publishing) is sent by the bus's
#: receiver thread only once it is this old (seconds). Sending whatever was
#: held at each look cut batches to a third of their size at full speed, and
#: per-frame work everywhere grew with it.
BATCH_MAX_WAIT: Final = 0.001

#: Reconnect quickly to a restarted bridge (ipc: no network to spare).
RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1000
#: On close, queued publications may take this long to reach the bridge.
PUBLISH_LINGER_MS: Final = 1000


def connect_push(sock: zmq.Socket[Any], options: ClientOptions) -> None:
    """The publishing socket: queues (bounded) while the bridge is away."""
    sock.setsockopt(zmq.SNDHWM, options.send_queue)
    sock.setsockopt(zmq.LINGER, PUBLISH_LINGER_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.connect(options.paths.endpoint(options.paths.pull))


def connect_sub(sock: zmq.Socket[Any], options: ClientOptions, topics: list[bytes]) -> None:
    """The receiving XSUB socket, subscribed to ``topics`` before it connects.

    XSUB, not SUB: subscriptions are messages we send, so a sync or history
    request can follow them on the same pipe. libzmq re-sends them after
    every reconnect, as for SUB.
    """
    sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    for topic in topics:
        sock.send(b"\x01" + topic)
    sock.connect(options.paths.endpoint(options.paths.pub))


def transport_error(exc: Exception, closed: bool) -> CircusEventsError:
    """What a ZeroMQ error means to a caller of the public API.

    A socket closed or a context terminated under the call (a ``close()`` on
    another thread) is :class:`BusClosed`; anything else is the transport
    failing, a :class:`BridgeError` naming it.
    """
    code = getattr(exc, "errno", None)
    if closed or code in (errno.ENOTSOCK, getattr(zmq, "ETERM", -1)):
        return BusClosed("the bus is closed")
    return BridgeError(f"the connection to the bridge failed: {exc}")


def check_timeout(name: str, value: object) -> float | None:
    """A timeout argument: None (wait forever) or a finite number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentError(name, f"must be a number of seconds or None, not {value!r}")
    if not 0 <= value <= MAX_TIMEOUT:  # nan too
        raise ArgumentError(
            name, f"must be from 0 to {MAX_TIMEOUT:.0f} seconds (or None), not {value!r}"
        )
    return float(value)


def or_forever(seconds: float | None) -> float:
    """A checked timeout where None (wait forever) means MAX_TIMEOUT."""
    return MAX_TIMEOUT if seconds is None else seconds


def _check_count(name: str, value: object, error: type[ConfigError | ArgumentError]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(name, f"must be a whole number, not {value!r}")
    if value < 1:
        raise error(name, f"must be at least 1, not {value!r}")
    return value


def history_args(history: object, since: object) -> tuple[int | None, int | None] | None:
    """``subscribe(history=, since=)`` checked: (limit, since in ms), or None for neither."""
    if history is None and since is None:
        return None
    if history is not None and (
        isinstance(history, bool) or not isinstance(history, int) or history < 0
    ):
        raise ArgumentError("history", f"must be a number of events, 0 or more, not {history!r}")
    since_ms = None
    if since is not None:
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise ArgumentError("since", f"must be a Unix time in seconds, not {since!r}")
        if not math.isfinite(since):
            raise ArgumentError("since", f"must be a Unix time in seconds, not {since!r}")
        since_ms = max(int(since * 1000), 0)
    return history, since_ms


@functools.lru_cache(maxsize=1024)
def _cached_pattern(text: str) -> Pattern:
    return Pattern(text)


def compile_pattern(text: object) -> Pattern:
    """A checked :class:`Pattern`; the same text compiles once (subscribe/close loops)."""
    if type(text) is str:
        return _cached_pattern(text)
    return Pattern(text)  # type: ignore[arg-type]  # raises ChannelError


def default_worker_id(host: str) -> str:
    """``<host>/<program>/<pid>``: a circus wid is a reused slot, not an identity."""
    program = os.environ.get("SUPERVISOR_PROCESS_NAME") or os.path.basename(sys.argv[0] or "")
    program = program.removesuffix(".py") or "python"
    return f"{host}/{program}/{os.getpid()}"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientOptions:
    """A client's resolved options: argument, else variable, else the shared default."""

    paths: SocketPaths
    host: str
    worker: str
    worker_is_default: bool
    codec: Codec
    echo: bool
    max_message_bytes: int
    publish_timeout: float
    send_queue: int
    queue_size: int
    queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES

    @classmethod
    def resolve(
        cls,
        *,
        dir: str | None = None,
        namespace: str | None = None,
        host: str | None = None,
        worker: str | None = None,
        codec: str | Codec = Codec.JSON,
        echo: bool = False,
        max_message_bytes: int | None = None,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        send_queue: int = DEFAULT_SEND_QUEUE,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        environ: Mapping[str, str] | None = None,
    ) -> ClientOptions:
        env = environ_options(environ)
        bridge = BridgeConfig.from_options(
            {
                "dir": dir or env.get("dir") or default_dir(environ),
                "namespace": namespace or env.get("namespace") or DEFAULT_NAMESPACE,
                "host": host or env.get("host") or default_host(),
                "max_message_bytes": max_message_bytes
                or env.get("max_message_bytes")
                or DEFAULT_MAX_MESSAGE_BYTES,
            }
        )
        worker_id = worker or env.get("worker")
        try:
            validate_worker_id(worker_id or bridge.host)
        except ChannelError as exc:
            raise ConfigError("worker", str(exc)) from None
        try:
            parsed_codec = parse_codec(codec)
        except ValueError as exc:
            raise ConfigError("codec", str(exc)) from None
        if (
            isinstance(publish_timeout, bool)
            or not isinstance(publish_timeout, int | float)
            or not 0 <= publish_timeout <= MAX_TIMEOUT
        ):
            raise ConfigError(
                "publish_timeout",
                f"must be from 0 to {MAX_TIMEOUT:.0f} seconds, not {publish_timeout!r}",
            )
        _check_count("send_queue", send_queue, ConfigError)
        _check_count("queue_size", queue_size, ConfigError)
        _check_count("queue_max_bytes", queue_max_bytes, ConfigError)
        paths = socket_paths(bridge.dir, bridge.namespace)
        # Before any socket exists: one lstat chain per client, never per message.
        check_client_dir(paths.directory)
        return cls(
            paths=paths,
            host=bridge.host,
            worker=worker_id or default_worker_id(bridge.host),
            worker_is_default=not worker_id,
            codec=parsed_codec,
            echo=echo,
            max_message_bytes=bridge.max_message_bytes,
            publish_timeout=publish_timeout,
            send_queue=send_queue,
            queue_size=queue_size,
            queue_max_bytes=queue_max_bytes,
        )

    def queue_limits(self, size: object, max_bytes: object) -> tuple[int, int]:
        """One subscription's limits: its own arguments, else the bus's."""
        return (
            self.queue_size if size is None else _check_count("queue_size", size, ArgumentError),
            self.queue_max_bytes
            if max_bytes is None
            else _check_count("queue_max_bytes", max_bytes, ArgumentError),
        )

    def after_fork(self) -> ClientOptions:
        """The options for a forked child: a default worker id names the new pid."""
        if not self.worker_is_default:
            return self
        return dataclasses.replace(self, worker=default_worker_id(self.host))


class Subscriber:
    """One registered interest: a pattern, where its events go, and an optional
    ``wake`` called once after each batch that gave it events.

    ``sink_many(events, nbytes)`` takes the events of one frame at once
    (cheaper than one ``sink`` call each), ``nbytes`` being the frame's size;
    a subscription's never waits: past its :class:`QueueBound` it drops.
    Without it (a handler), ``sink`` gets the events one by one.
    """

    __slots__ = ("bound", "fail", "history", "pattern", "sink", "sink_many", "wake")

    def __init__(
        self,
        pattern: Pattern,
        sink: Callable[[Event], Any],
        wake: Callable[[], None] | None = None,
        fail: Callable[[Exception], None] | None = None,
        sink_many: Callable[[list[Event], int], None] | None = None,
        bound: QueueBound | None = None,
    ) -> None:
        self.pattern = pattern
        self.sink = sink
        self.wake = wake
        self.fail = fail
        self.sink_many = sink_many
        #: A subscription's queue bound: it also bounds live events held
        #: while history loads. None for a handler (DEFAULT_QUEUE_SIZE then).
        self.bound = bound
        #: While its history loads, live events wait here instead of the sink.
        self.history: HistoryLoad | None = None


class QueueBound:
    """How much one subscription's queue may take, and the exact count of what
    it dropped.

    Theory of operation: the queue itself (a deque, an ``asyncio.Queue``)
    belongs to the client. Whoever fills it (one party at a time: the thread
    holding the sockets, or the event loop) asks :meth:`admit` how many of a
    frame's events fit, appends that many, and hands the rest to
    :meth:`drop`. Readers only pop: what they took is worked out from the
    queue's length (events appended so far less events still queued), so
    ``get()`` does no accounting, and two reading threads cannot make the
    counts drift. Bytes are known per frame, not per event: a frame still
    partly queued counts whole, so the byte count errs high by at most one
    frame. Drops are kept per (origin, host, channel) until the bus reports
    them (:meth:`BusCore.report_drops`), one :class:`Gap` each, with this
    subscription's pattern: the sum of ``missed`` is what it lost.
    """

    __slots__ = (
        "_appended",
        "_bytes_in",
        "_floor",
        "_marks",
        "_pending",
        "_report_to",
        "dropped",
        "max_bytes",
        "max_events",
        "pattern",
        "per_event",
    )

    def __init__(
        self,
        pattern: str,
        max_events: int,
        max_bytes: int,
        report_to: list[QueueBound],
        per_event: int = EVENT_OVERHEAD_BYTES,
    ) -> None:
        self.pattern = pattern
        self.max_events = max_events
        self.max_bytes = max_bytes
        #: Bytes an event costs besides the frame bytes it came with.
        self.per_event = per_event
        #: Events dropped, ever.
        self.dropped = 0
        self._report_to = report_to
        self._appended = 0
        self._bytes_in = 0
        #: Bytes of the frames known to be taken out of the queue.
        self._floor = 0
        #: (events appended, bytes appended) after each frame still (partly) queued.
        self._marks: collections.deque[tuple[int, int]] = collections.deque()
        #: Drops not reported yet: (origin, host, channel) -> [missed, last seq].
        self._pending: dict[tuple[str, str, str], list[int]] = {}

    def queued_bytes(self, queued: int) -> int:
        """Bytes in a queue holding ``queued`` items (at most one frame too many)."""
        consumed = self._appended - queued
        marks = self._marks
        while marks and marks[0][0] <= consumed:
            self._floor = marks.popleft()[1]
        return self._bytes_in - self._floor

    def admit(self, count: int, nbytes: int, queued: int) -> int:
        """How many of a frame's ``count`` events (``nbytes`` in all, to which
        ``per_event`` is added for each) go into a
        queue holding ``queued`` items now: all of them, unless the queue is
        full. The caller appends that many, from the first, and passes the
        rest to :meth:`drop`."""
        # The common case inline (once per frame on the receive path: calls
        # to queued_bytes and _record cost a tenth of a one-message frame).
        nbytes += count * self.per_event
        marks = self._marks
        appended = self._appended
        consumed = appended - queued
        while marks and marks[0][0] <= consumed:
            self._floor = marks.popleft()[1]
        bytes_in = self._bytes_in + nbytes
        if queued + count <= self.max_events and bytes_in - self._floor <= self.max_bytes:
            self._appended = appended = appended + count
            self._bytes_in = bytes_in
            marks.append((appended, bytes_in))
            return count
        room = self.max_events - queued
        if room <= 0:
            return 0
        room_bytes = self.max_bytes - (self._bytes_in - self._floor)
        # Bytes per event as the frame's average: a batch's events are alike.
        take = min(count, room, max(room_bytes, 0) * count // nbytes if nbytes else count)
        if take == 0 and queued == 0:
            take = 1  # an empty queue takes one event, however large
        if take:
            self._record(take, -(-nbytes * take // count))
        return take

    def _record(self, count: int, nbytes: int) -> None:
        self._appended += count
        self._bytes_in += nbytes
        self._marks.append((self._appended, self._bytes_in))

    def drop(self, last: Event, count: int) -> None:
        """``count`` events of ``last``'s frame, up to ``last``, were not queued."""
        self.dropped += count
        key = (last.origin, last.host, last.channel)
        pending = self._pending
        entry = pending.get(key)
        if entry is None:
            if not pending:
                self._report_to.append(self)
            pending[key] = [count, last.seq]
        else:
            entry[0] += count
            entry[1] = last.seq

    def take_gaps(self) -> list[Gap]:
        """The drops since the last call, one gap per (origin, host, channel)."""
        gaps = [
            Gap(origin, host, channel, missed, seq, self.pattern, GAP_QUEUE_FULL)
            for (origin, host, channel), (missed, seq) in self._pending.items()
        ]
        self._pending = {}
        return gaps


class Failure:
    """An error a subscription's reader gets once, in order (a failed history load)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class HistoryLoad:
    """One ``subscribe(..., history=N)`` in progress.

    The subscription is live before the request is sent (it goes up the same
    pipe, after the subscription), so live events that arrive meanwhile are
    held; at the end, history comes first, then the held events that history
    did not already contain: no duplicate and no hole at the seam.
    """

    __slots__ = (
        "asked_at",
        "error",
        "held",
        "held_bytes",
        "limit",
        "replays",
        "since_ms",
        "started",
        "subscriber",
        "token",
    )

    def __init__(
        self, subscriber: Subscriber, token: bytes, limit: int | None, since_ms: int | None
    ) -> None:
        self.subscriber = subscriber
        self.token = token
        self.limit = limit
        self.since_ms = since_ms
        self.replays: dict[tuple[str, int, str, int], Event] = {}
        self.held: list[Event] = []
        #: Payload bytes in ``held``.
        self.held_bytes = 0
        self.asked_at = 0.0
        self.started = time.monotonic()
        self.error: Exception | None = None


class Prepared(NamedTuple):
    """A validated, encoded message that has no sequence number yet."""

    #: What a batch must share: channel, flags, target, codec.
    key: tuple[str, int, str | None, Codec]
    #: The sequence it is numbered in (the channel, the inbox, plus the scope).
    seq_key: str
    payload: bytes
    #: Frame bytes besides the payload.
    overhead: int


_RAW: Final = int(Codec.RAW)
_ABSENT: Final = object()

#: Builds a Prepared without its Python-level ``__new__`` (half the cost).
_new_tuple: Callable[[type[Prepared], tuple[Any, ...]], Prepared] = tuple.__new__


class _KnownChannel:
    """What publishing on a channel needs that does not change between messages."""

    __slots__ = ("cluster_key", "host_key", "host_seq_key", "overhead")

    def __init__(self, channel: str, codec: Codec, overhead: int) -> None:
        self.overhead = overhead
        self.cluster_key = (channel, 0, None, codec)
        self.host_key = (channel, FLAG_HOST_ONLY, None, codec)
        self.host_seq_key = channel + "\0host"


class OpenBatch:
    """Messages held to go out together in one frame (see :data:`HOT_GAP`)."""

    __slots__ = (
        "channel",
        "clock",
        "first_seq",
        "limit",
        "payloads",
        "prepared",
        "raw",
        "scope",
        "size",
        "times",
    )

    def __init__(
        self,
        prepared: Prepared,
        seq: int,
        when: float,
        opened: float,
        limit: int,
        scope: str | None,
    ) -> None:
        self.prepared = prepared
        self.channel = prepared.key[0]
        #: What :meth:`BusCore.join` matches: "cluster" or "host" for a plain
        #: publish with the bus's codec, None for anything else.
        self.scope = scope
        #: Raw payloads: bytes join as they are.
        self.raw = prepared.key[3] == _RAW
        self.first_seq = seq
        #: Unix time less monotonic time: a message's time is its publish's
        #: monotonic time plus this (a batch lasts milliseconds; reading the
        #: wall clock again for each message cost a tenth of the hot path).
        self.clock = when - opened
        self.times = [when]
        self.payloads = [prepared.payload]
        self.limit = limit
        #: The frame's size as a batch: names and header, count, then 12 bytes
        #: (time and length) plus the payload per message.
        self.size = prepared.overhead + 4 + 12 + len(prepared.payload)

    def add(self, payload: bytes, now: float) -> int:
        """Add a numbered message published at ``now`` (monotonic): 0 if there
        is no room (nothing added), 1 if added, 2 if added and now full (no
        room for another of about the same size: the batch should leave)."""
        payloads = self.payloads
        count = len(payloads)
        size = self.size + 12 + len(payload)
        if size > self.limit or count >= BATCH_MAX_COUNT:
            return 0
        self.size = size
        self.times.append(now + self.clock)
        payloads.append(payload)
        count += 1
        return 2 if count >= BATCH_MAX_COUNT or size * (count + 1) > self.limit * count else 1

    @property
    def full(self) -> bool:
        count = len(self.payloads)
        return count >= BATCH_MAX_COUNT or self.size * (count + 1) > self.limit * count


class BusCore:
    """The I/O-free part of a bus: one per bus, reset in a forked child."""

    def __init__(self, options: ClientOptions, on_gap: Callable[[Gap], Any] | None) -> None:
        self.options = options
        self.on_gap = on_gap
        #: Registered subscribers, in order (a dict: removing one is O(1)).
        self.subscribers: dict[Subscriber, None] = {}
        self.topic_refs: dict[bytes, int] = {}
        #: Topics added or removed since the outbox was last taken, each with
        #: whether it was subscribed before: a subscribe and a close in
        #: between send nothing (see :meth:`take_outbox`).
        self._topic_was: dict[bytes, bool] = {}
        #: Subscriptions that dropped events not reported yet, and all drops reported.
        self.dropping: list[QueueBound] = []
        self.dropped = 0
        self.tracker = SequenceTracker()
        self.received = 0
        self.published = 0
        self.undecodable = 0
        #: The bridge's last refusal of one of this bus's subscriptions (past its
        #: ``max_subscriptions``/``max_patterns``), or None.
        self.refused: str | None = None
        #: Channels already validated, with what publishing on them needs.
        self._known_channels: dict[str, _KnownChannel] = {}
        #: History loads, first one in progress (one at a time per bus).
        self.loads: dict[bytes, HistoryLoad] = {}
        #: Frames the I/O layer must send up the subscription socket, in order.
        self.outbox: list[bytes] = []
        #: History loads the bridge has finished answering, not yet delivered.
        self.finished: list[HistoryLoad] = []
        #: Called with the token of a flush marker that came back (see ``flush_frame``).
        self.on_flush: Callable[[bytes], None] | None = None
        self.renew()

    def renew(self) -> None:
        """A new identity for this process: new epoch, fresh sequence numbers."""
        self.epoch = time.time_ns() // 1000
        self._seqs: dict[str, int] = {}
        #: Messages waiting to leave together (publishing side, see OpenBatch).
        self.batch: OpenBatch | None = None
        #: When publish was last called, and how many calls in a row came
        #: within HOT_GAP of the one before.
        self.last_publish = 0.0
        self._streak = 0
        #: When the last batch was opened (monotonic).
        self._batched_at = -BURST_MEMORY
        self._origin = self.options.worker.encode("utf-8")
        self._host = self.options.host.encode("utf-8")
        self.inbox = inbox_topic(self.options.worker)
        # A new socket is subscribed to topic_refs as they are: nothing to change.
        self._topic_was = {}

    # -- publishing ---------------------------------------------------------------

    def prepare(
        self,
        channel: str,
        data: Any,
        scope: str,
        target: str | None = None,
        *,
        system: bool = False,
        codec: Codec | None = None,
    ) -> Prepared:
        """Validate and encode one message; raises before anything is sent."""
        if target is None and codec is None and type(channel) is str:
            # The common case, from what the channel's first message worked out.
            known = self._known_channels.get(channel)
            if known is not None and (scope in ("cluster", "host")):
                payload = encode_payload(self.options.codec, data)
                if known.overhead + len(payload) > self.options.max_message_bytes:
                    raise self._too_large(channel, known.overhead + len(payload))
                if scope == "cluster":
                    return _new_tuple(
                        Prepared, (known.cluster_key, channel, payload, known.overhead)
                    )
                return _new_tuple(
                    Prepared, (known.host_key, known.host_seq_key, payload, known.overhead)
                )
        encoded = validate_channel(channel, allow_system=system)
        if scope not in _SCOPES:
            raise ArgumentError("scope", f"must be one of {', '.join(_SCOPES)}, not {scope!r}")
        overhead = len(encoded) + 1 + HEADER.size + len(self._origin) + len(self._host)
        if target is None and codec is None and not system:
            if len(self._known_channels) >= _MAX_CACHED_CHANNELS:
                self._known_channels.clear()
            self._known_channels[channel] = _KnownChannel(channel, self.options.codec, overhead)
        codec = self.options.codec if codec is None else codec
        payload = encode_payload(codec, data)
        flags = FLAG_HOST_ONLY if scope == "host" else 0
        if target is None:
            seq_key = channel
        else:
            try:
                validate_worker_id(target)
            except ChannelError as exc:
                raise ArgumentError("worker", str(exc)) from None
            seq_key = inbox_channel(target)
            # The topic is the inbox; the channel rides after the names.
            overhead += len(seq_key.encode("utf-8")) + 1
        if flags:
            seq_key += "\0host"
        if overhead + len(payload) > self.options.max_message_bytes:
            raise self._too_large(channel, overhead + len(payload))
        return Prepared((channel, flags, target, codec), seq_key, payload, overhead)

    def _too_large(self, channel: str, size: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"message on {channel!r} is {size} bytes encoded; "
            f"max_message_bytes is {self.options.max_message_bytes}"
        )

    def encode(
        self,
        channel: str,
        data: Any,
        scope: str,
        target: str | None = None,
        *,
        system: bool = False,
        codec: Codec | None = None,
    ) -> bytes:
        """Validate, number and encode one message as a frame of its own."""
        prepared = self.prepare(channel, data, scope, target, system=system, codec=codec)
        frame = self.single_frame(prepared)
        self.commit(prepared)
        return frame

    def single_frame(self, prepared: Prepared) -> bytes:
        """The frame of one message, numbered next (:meth:`commit` once it is sent)."""
        channel, flags, target, codec = prepared.key
        return encode_frame(
            channel,
            origin=self._origin,
            host=self._host,
            epoch=self.epoch,
            seq=self._seqs.get(prepared.seq_key, 0) + 1,
            time=time.time(),
            codec=codec,
            payload=prepared.payload,
            flags=flags,
            target=target,
        )

    def commit(self, prepared: Prepared) -> None:
        """The frame from :meth:`single_frame` left: its number is used."""
        self._seqs[prepared.seq_key] = self._seqs.get(prepared.seq_key, 0) + 1
        self.published += 1

    def hold(self, prepared: Prepared) -> int:
        """Number the message and add it to the open batch, or open one.

        Returns 0, holding nothing, if the open batch cannot take it (another
        channel, or no room): the caller sends the batch first. Else 1, or 2
        when the batch is now full (see :meth:`OpenBatch.add`).
        """
        batch = self.batch
        if batch is None:
            seq = self._seqs.get(prepared.seq_key, 0) + 1
            limit = min(BATCH_MAX_BYTES, self.options.max_message_bytes)
            self._batched_at = self.last_publish
            _, flags, target, codec = prepared.key
            scope = None
            if target is None and codec == self.options.codec:
                scope = "host" if flags & FLAG_HOST_ONLY else "cluster"
            self.batch = OpenBatch(prepared, seq, time.time(), self.last_publish, limit, scope)
            self.published += 1
            return 2 if self.batch.full else 1
        if prepared.key != batch.prepared.key:
            return 0
        added = batch.add(prepared.payload, self.last_publish)
        if added:
            self.published += 1
        return added

    def batch_due(self, now: float) -> bool:
        """True if the open batch should leave without waiting to fill: its
        publisher paused (nothing within HOT_GAP) or it is BATCH_MAX_WAIT old."""
        return now - self.last_publish >= HOT_GAP or now - self._batched_at >= BATCH_MAX_WAIT

    def in_burst(self, now: float) -> bool:
        """Record a publish at ``now`` (monotonic); True if it should be held in
        a batch: it is at least the BURST_MIN-th of a burst."""
        self._streak = self._streak + 1 if now - self.last_publish < HOT_GAP else 0
        self.last_publish = now
        if now - self._batched_at < BURST_MEMORY:
            return self._streak >= 1
        return self._streak >= BURST_MIN

    def join(self, channel: str, data: Any, scope: str, now: float) -> int:
        """The hot path of a burst: add a plain publish at ``now`` (monotonic)
        to the open batch.

        Returns 0 if the batch cannot take it without more checks (the caller
        then goes the long way: prepare, hold), 1 if it joined, 2 if it
        joined and the batch is now full.
        """
        batch = self.batch
        if batch is None or channel != batch.channel or scope != batch.scope:
            return 0
        if batch.raw and data.__class__ is bytes:
            payload = data
        else:
            payload = encode_payload(self.options.codec, data)
        added = batch.add(payload, now)
        if added:
            self.published += 1
        return added

    def batch_frame(self) -> bytes:
        """The open batch as one frame; it stays open until :meth:`batch_sent`."""
        batch = self.batch
        assert batch is not None
        channel, flags, target, codec = batch.prepared.key
        return encode_batch(
            channel,
            origin=self._origin,
            host=self._host,
            epoch=self.epoch,
            first_seq=batch.first_seq,
            times=batch.times,
            codec=codec,
            payloads=batch.payloads,
            flags=flags,
            target=target,
        )

    def batch_sent(self) -> None:
        """The batch frame left: its numbers are used."""
        batch = self.batch
        assert batch is not None
        self._seqs[batch.prepared.seq_key] = batch.first_seq + len(batch.payloads) - 1
        self.batch = None

    def flush_frame(self, token: bytes) -> bytes:
        """A marker sent to our own inbox: when it comes back, the bridge has
        taken everything sent before it (one PUSH pipe is first in, first out)."""
        return self.encode(
            FLUSH_CHANNEL, token, "host", target=self.options.worker, system=True, codec=Codec.RAW
        )

    def sync_request(self, token: bytes) -> bytes:
        """A request sent up the subscription socket, after our subscriptions:
        the bridge answers on our inbox once it has applied all of them."""
        return SYNC_REQUEST + self.options.worker.encode("utf-8") + b"\0" + token

    def local_event(self, channel: str, data: Any) -> Event:
        """A ``scope="process"`` event: encoded like any other, delivered in-process."""
        validate_channel(channel)
        payload = encode_payload(self.options.codec, data)
        if len(payload) > self.options.max_message_bytes:
            raise MessageTooLarge(
                f"message on {channel!r} is {len(payload)} bytes encoded; "
                f"max_message_bytes is {self.options.max_message_bytes}"
            )
        key = channel + "\0process"
        seq = self._seqs.get(key, 0) + 1
        self._seqs[key] = seq
        envelope = Envelope(
            channel,
            self.options.worker,
            self.options.host,
            self.epoch,
            seq,
            time.time(),
            self.options.codec,
            0,
            payload,
        )
        return Event.single(envelope)

    # -- receiving ----------------------------------------------------------------

    def accept(self, frame: bytes) -> list[Event] | None:
        """Turn a received frame into its events, or None (echo, duplicate, bad)."""
        try:
            env, times, bounds = decode_messages(frame)
        except ProtocolError as exc:  # the bridge validated it; count, never crash
            self.undecodable += 1
            log.warning("dropped a frame that does not decode: %s", exc)
            return None
        if env.flags & FLAG_NOTICE:
            self._notice(env.channel, frame[bounds[0] :])
            return None
        own = env.epoch == self.epoch and env.origin == self.options.worker
        if own and env.target is None and not self.options.echo:
            return None
        if env.target is not None:
            if env.target != self.options.worker:
                return None
            if env.channel in (FLUSH_CHANNEL, SYNC_CHANNEL):
                if self.on_flush is not None:
                    self.on_flush(frame[bounds[0] :])
                return None
            if env.flags & FLAG_REPLAY or env.channel == HISTORY_END_CHANNEL:
                self._history_frame(env._replace(payload=frame[bounds[0] :]))
                return None
            key = inbox_channel(env.target)
        else:
            key = env.channel
        if env.flags & FLAG_HOST_ONLY:
            key += "\0host"
        kind = RawEvent if env.codec == _RAW else Event
        first = env.seq
        if env.messages > 1:
            results = self.tracker.observe_run(env.origin, key, env.epoch, first, env.messages)
            if results is None:  # all new, in order: the common case
                seqs = range(first, first + env.messages)
                events = [
                    kind(env, seq, t, frame[start:end])
                    for seq, t, start, end in zip(seqs, times, bounds, bounds[1:], strict=False)
                ]
                self.received += env.messages
                return events
        else:
            results = [self.tracker.observe(env.origin, key, env.epoch, first)]
        events = []
        for i, missed in enumerate(results):
            if missed == DUPLICATE:
                continue
            if missed:
                self._report_gap(env, missed, first + i)
            events.append(kind(env, first + i, times[i], frame[bounds[i] : bounds[i + 1]]))
        if not events:
            return None
        self.received += len(events)
        return events

    def _notice(self, channel: str, payload: bytes) -> None:
        """The bridge refused a subscription; report it if it is one of ours."""
        topic = channel_topic(channel) if payload[:1] == b"\x01" else channel.encode()
        if topic in self.topic_refs or topic == self.inbox:
            self.refused = payload[1:].decode(errors="replace")
            log.error("circus-events: %s", self.refused)

    def _report_gap(self, env: Envelope, missed: int, seq: int) -> None:
        if self.on_gap is not None:
            self._gap(Gap(env.origin, env.host, env.channel, missed, seq))

    def _gap(self, gap: Gap) -> None:
        if self.on_gap is not None:
            try:
                self.on_gap(gap)
            except Exception:
                log.exception("on_gap callback failed")

    def new_bound(
        self, pattern: Pattern, size: object = None, max_bytes: object = None
    ) -> QueueBound:
        """The :class:`QueueBound` of a new subscription (its own limits, else the bus's)."""
        max_events, limit = self.options.queue_limits(size, max_bytes)
        return QueueBound(pattern.text, max_events, limit, self.dropping)

    def report_drops(self) -> None:
        """Tell ``on_gap`` what full subscription queues dropped (call after each
        round of frames: one gap per subscription and channel, not per event)."""
        dropping, self.dropping[:] = list(self.dropping), []
        for bound in dropping:
            for gap in bound.take_gaps():
                self.dropped += gap.missed
                self._gap(gap)

    def route(self, events: list[Event]) -> list[Subscriber]:
        """The subscribers to hand ``events`` (one channel) to now; those
        loading history hold them."""
        channel = events[0].channel
        ready = []
        for subscriber in self.subscribers:
            if subscriber.pattern.matches(channel):
                if subscriber.history is None:
                    ready.append(subscriber)
                else:
                    self._hold(subscriber, subscriber.history, events)
        return ready

    def _hold(self, subscriber: Subscriber, load: HistoryLoad, events: list[Event]) -> None:
        """Hold live events while history loads, within the subscriber's bounds
        (a load lasts up to HISTORY_TIMEOUT: at full speed, millions of events)."""
        bound = subscriber.bound
        max_events = DEFAULT_QUEUE_SIZE if bound is None else bound.max_events
        max_bytes = DEFAULT_QUEUE_MAX_BYTES if bound is None else bound.max_bytes
        held = load.held
        taken = 0
        for event in events:
            size = len(event.payload)
            if len(held) >= max_events or load.held_bytes + size > max_bytes:
                break
            held.append(event)
            load.held_bytes += size
            taken += 1
        if taken < len(events):
            if bound is not None:
                bound.drop(events[-1], len(events) - taken)
            else:
                self._gap(
                    Gap(
                        events[-1].origin,
                        events[-1].host,
                        events[-1].channel,
                        len(events) - taken,
                        events[-1].seq,
                        subscriber.pattern.text,
                        GAP_QUEUE_FULL,
                    )
                )
                self.dropped += len(events) - taken

    # -- history ----------------------------------------------------------------------

    def add_history(self, subscriber: Subscriber, limit: int | None, since_ms: int | None) -> None:
        """Ask the bridge for ``subscriber``'s history (after its subscription was sent)."""
        if limit is not None and limit < 0:
            raise ArgumentError("history", "must be a number of events, 0 or more")
        token = secrets.token_hex(REPLAY_TOKEN_BYTES // 2).encode()
        load = HistoryLoad(subscriber, token, limit, since_ms)
        subscriber.history = load
        self.loads[token] = load
        if len(self.loads) == 1:
            self._ask(load)

    def _ask(self, load: HistoryLoad) -> None:
        load.asked_at = time.monotonic()
        self.outbox.append(
            build_history_request(
                self.options.worker,
                load.token,
                load.limit,
                load.since_ms,
                load.subscriber.pattern.text,
            )
        )

    def check_history(self) -> None:
        """Ask again if the bridge is silent (the request is lost if sent while it restarts)."""
        load = next(iter(self.loads.values()), None)
        if load is None:
            return
        now = time.monotonic()
        if now - load.started > HISTORY_TIMEOUT:
            self._finish(load, BridgeError("the bridge did not answer the history request"))
        elif now - load.asked_at > HISTORY_RETRY:
            self._ask(load)

    def _history_frame(self, env: Envelope) -> None:
        token, rest = env.payload[:REPLAY_TOKEN_BYTES], env.payload[REPLAY_TOKEN_BYTES:]
        load = self.loads.get(token)
        if load is None or load is not next(iter(self.loads.values())):
            return  # an answer to a request already finished (asked twice)
        load.asked_at = time.monotonic()  # the bridge is answering: do not ask again
        if env.channel == HISTORY_END_CHANNEL:
            self._finish(load, BridgeError(rest.decode("utf-8", "replace")) if rest else None)
            return
        key = (env.origin, env.epoch, env.channel, env.seq)
        load.replays[key] = Event.single(env._replace(payload=rest, target=None, flags=0))

    def _finish(self, load: HistoryLoad, error: Exception | None) -> None:
        # The subscriber keeps holding live events until the I/O layer takes
        # this load (take_completed): an event routed in between, later in the
        # same batch, must not overtake the history.
        del self.loads[load.token]
        load.error = error
        self.finished.append(load)
        following = next(iter(self.loads.values()), None)
        if following is not None:
            self._ask(following)

    def take_completed(self) -> list[tuple[Subscriber, list[Event], Exception | None]]:
        """Finished history loads: (subscriber, history then held live events, error)."""
        done = []
        for load in self.finished:
            subscriber = load.subscriber
            subscriber.history = None
            history = list(load.replays.values())
            newest: dict[tuple[str, int, str], int] = {}
            for event in history:
                epoch = event.id.epoch
                key = (event.origin, epoch, event.channel)
                newest[key] = max(newest.get(key, 0), event.seq)
                # A live copy still on its way (the bridge reads Redis a little
                # behind the history query) must then count as a duplicate.
                self.tracker.observe(event.origin, event.channel, epoch, event.seq, count=False)
            live = [
                e for e in load.held if e.seq > newest.get((e.origin, e.id.epoch, e.channel), 0)
            ]
            if subscriber in self.subscribers:
                done.append((subscriber, history + live, load.error))
        self.finished = []
        return done

    def take_outbox(self) -> list[bytes]:
        """Frames to send up the subscription socket, in order: the net
        subscription changes first (a request may depend on them), then the
        requests (history, sync)."""
        frames = []
        if self._topic_was:
            topic_refs = self.topic_refs
            for topic, was in self._topic_was.items():
                now = topic in topic_refs
                if now != was:
                    frames.append((b"\x01" if now else b"\x00") + topic)
            self._topic_was = {}
        if self.outbox:
            frames += self.outbox
            self.outbox = []
        return frames

    @property
    def outbox_pending(self) -> bool:
        return bool(self._topic_was or self.outbox)

    # -- subscriptions --------------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        """Register; the ZeroMQ subscription it may need leaves with the outbox."""
        self.subscribers[subscriber] = None
        topic = subscriber.pattern.topic
        count = self.topic_refs.get(topic, 0)
        self.topic_refs[topic] = count + 1
        if count == 0 and topic not in self._topic_was:
            self._topic_was[topic] = False

    def remove(self, subscriber: Subscriber) -> bool:
        """Unregister (False if it was not registered); forget every reference."""
        if self.subscribers.pop(subscriber, _ABSENT) is _ABSENT:
            return False
        if subscriber.history is not None:
            self._finish(subscriber.history, None)
        topic = subscriber.pattern.topic
        count = self.topic_refs.get(topic, 0) - 1
        if count > 0:
            self.topic_refs[topic] = count
        else:
            self.topic_refs.pop(topic, None)
            if topic not in self._topic_was:
                self._topic_was[topic] = True
        return True

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "received": self.received,
            "gaps": self.tracker.gaps,
            "missed": self.tracker.missed,
            "duplicates": self.tracker.duplicates,
            "undecodable": self.undecodable,
            "dropped": self.dropped,
        }
