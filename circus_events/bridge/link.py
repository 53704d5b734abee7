"""What both Redis sides share: two connections, the outbound queue, liveness, presence.

:class:`RedisLink` is held by :class:`.redis_side.RedisSide` (pub/sub mode)
and :class:`.stream_side.StreamSide` (stream mode); each side passes itself
as the link's :class:`LinkMode`, the few decisions that differ by mode:

* two connections, ``pub`` and ``sub``, each kept open by a
  :class:`.keeper.ConnectionKeeper` (jittered backoff, one log line per
  problem per :data:`.keeper.LOG_REPEAT_INTERVAL`); the mode is told when
  each is up (:meth:`LinkMode.pub_ready`, :meth:`LinkMode.sub_ready`) or
  gone (:meth:`LinkMode.sub_gone`);
* the publish hot path: :meth:`RedisLink.publish` encodes one command per
  frame in place (the mode gives the command's head for a channel,
  :meth:`LinkMode.publish_head`) and queues it in the
  :class:`.outbound.OutboundQueue`; one write per loop turn; replies are
  counted, unanswered commands re-sent after a reconnect;
* what a value read from Redis must be to be relayed (:class:`ValueCheck`), counted;
* liveness: a tick every ``tick_interval`` calls :meth:`LinkMode.beat`; pub's stall
  check (:meth:`RedisLink.pub_stalled`, :data:`HEARTBEAT_TIMEOUT`), silence reports;
* control commands on ``pub`` in order with the messages, the presence
  record (:mod:`.presence`), ``close()`` with a short flush (the mode stops
  its timers and sends its last commands first), ``status()``'s common part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple, NotRequired, Protocol, TypedDict, Unpack

from .._config import BridgeConfig
from .._exceptions import ConfigError
from ..protocol.envelope import FLAG_HOST_ONLY, HEADER, NODE_ID_BYTES, REDIS_VERSION
from .keeper import BACKOFF_MAX, ConnectionKeeper, LogThrottle, client_name
from .outbound import OutboundQueue, ReplyCallback
from .presence import PRESENCE_TTL_FACTOR, presence_record, redis_names
from .resp import RedisAddress, RedisConnectError, RespConnection, encode_command
from .roundtrip import RoundTrip
from .values import ValueCheck

__all__ = [
    "CLOSE_FLUSH_TIMEOUT",
    "FLUSH_BYTES",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "WRITE_BUFFER_HIGH",
    "LinkKind",
    "LinkMode",
    "RedisLink",
    "SideWiring",
    "client_name",
]

log = logging.getLogger("circus_events.redis")

#: Flush inside publish() once this many value bytes are pending (or the cap, if lower).
FLUSH_BYTES: Final = 256 * 1024
#: Transport write buffer above which flushing pauses (pending grows, capped).
WRITE_BUFFER_HIGH: Final = 4 * 1024 * 1024
#: close() waits this long for queued messages to reach Redis.
CLOSE_FLUSH_TIMEOUT: Final = 1.0

#: Liveness checks (and pub/sub heartbeats) every this many seconds.
HEARTBEAT_INTERVAL: Final = 1.0
#: pub's oldest command (pub/sub mode: sub's heartbeat) without an answer for
#: this long: the connection is dead.
HEARTBEAT_TIMEOUT: Final = 3.0
#: Pre-encoded "<len>\r\n" for the value lengths of typical events.
_LENGTHS: Final = [b"%d\r\n" % n for n in range(4096)]
_HEADS_MAX: Final = 4096


class SideWiring(TypedDict):
    """What the bridge hands a Redis side besides its config."""

    #: Called on the loop with the local frames read from Redis, once per read.
    deliver: Callable[[list[bytes]], None]
    #: The bridge's own status, for the presence record.
    status_provider: NotRequired[Callable[[], dict[str, Any]] | None]
    logger: NotRequired[logging.Logger | None]
    #: pub/sub: how long a backlog waits after an outage; stream: the longest
    #: wait for the saved subscriptions after a restart (each side's default).
    resume_grace: NotRequired[float]
    #: True while frames wait in the bridge's rejoin hold, not yet delivered:
    #: stream mode then saves no cursor (it may be past some of them).
    delivery_held: NotRequired[Callable[[], bool]]


class LinkKind(NamedTuple):
    """What one message's command is, and how often the mode's tick runs."""

    #: Seconds between :meth:`LinkMode.beat` calls.
    tick_interval: float
    #: The class of a successful reply (``PUBLISH``: int, ``XADD``: bytes).
    reply_type: type
    #: The command's name, for errors.
    command: str


class LinkMode(Protocol):
    """What a mode decides for its :class:`RedisLink`; the link calls these on the loop."""

    def publish_head(self, topic: bytes) -> bytes:
        """The encoded command for a message on ``topic``, up to its value's ``$``."""

    def pub_ready(self, outage: bool) -> None:
        """pub is up (``link.pub`` is set); called just before the first flush."""

    def sub_ready(self, conn: RespConnection) -> None:
        """A new sub connection: set ``link.sub`` to it once it serves."""

    def sub_gone(self, conn: RespConnection) -> None:
        """The sub connection ``conn`` is closed (lost, or closing)."""

    @property
    def subscriptions_settled(self) -> bool:
        """Connected, and Redis serves every current local interest."""

    def beat(self, now: float, *, judge: bool) -> None:
        """Every ``tick_interval``: liveness checks, heartbeats, presence when due;
        ``judge`` is False after a blocked loop (silence is not the peer's fault)."""

    def stop_timers(self) -> None:
        """Closing: cancel the mode's timers (the tick is cancelled already)."""

    def final_commands(self) -> None:
        """Closing with pub open: the mode's last commands, before the presence DEL."""

    def status(self) -> dict[str, Any]:
        """The side's whole status (the link's and the mode's keys), for presence."""


class RedisLink:
    """Both Redis connections of one bridge: the part every mode shares."""

    def __init__(
        self,
        config: BridgeConfig,
        mode: LinkMode,
        kind: LinkKind,
        **wiring: Unpack[SideWiring],
    ) -> None:
        self.config = config
        self._mode = mode
        self._tick_interval = kind.tick_interval
        self._deliver = wiring["deliver"]
        self._status_provider = wiring.get("status_provider")
        self.log = wiring.get("logger") or log
        self._address: RedisAddress | None = None
        self._config_error: str | None = None
        # The URL was checked when the config was made; this stays for a config
        # without one (the state then reads "config_error").
        self._address = config.redis_address
        if self._address is None:
            self._config_error = str(ConfigError("redis_url", "no Redis URL is configured"))
        names = redis_names(config)
        self.base = names.base
        self.base_len = len(names.base)
        self._presence_key = names.presence
        self.stamp = bytes((REDIS_VERSION,)) + config.node_id
        self.check = ValueCheck(self.stamp, config.ignore_hosts)
        self._heads: dict[bytes, bytes] = {}
        self.queue = OutboundQueue(
            config.buffer_max_bytes,
            reply_type=kind.reply_type,
            command=kind.command,
            on_error=self._publish_refused,
        )
        #: publish() calls _flush() past this many pending bytes.
        self._check_at = min(FLUSH_BYTES, config.buffer_max_bytes)
        self.pub: RespConnection | None = None
        self.sub: RespConnection | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        #: While True, pending messages wait (pub/sub mode's post-outage hold).
        self.holding = False
        self.closing = False
        self._closing_event = asyncio.Event()
        #: Set while both connections serve (see :meth:`note_state`).
        self.connected_event = asyncio.Event()
        #: Set while there is nothing to wait for: Redis serves every local
        #: interest, or there is no connection to wait on.
        self.settled_event = asyncio.Event()
        self.settled_event.set()
        #: Set once the first attempt to reach Redis ended, either way: a new
        #: bridge's sync replies wait for it (see ``replies``).
        self.first_attempt = asyncio.Event()
        if self._address is None:
            self.first_attempt.set()
        self._closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._tick_task: asyncio.Task[None] | None = None
        self._next_presence = 0.0
        self._started = time.monotonic()
        # Problems and their log throttle.
        self._errors: dict[str, RedisConnectError | None] = {"pub": None, "sub": None}
        self.last_error: str | None = self._config_error
        self.throttle = LogThrottle()
        # Counters (see status()).
        self._received = 0
        self._reconnects = 0
        self.hb_misses = 0
        self._stalls = 0
        self.rtt = RoundTrip()  # the heartbeat round trip (see .roundtrip)
        self._deliver_errors = 0
        self._connect_failures = 0
        self._foreign = 0

    # -- the hot path ----------------------------------------------------------------

    def publish(self, frame: bytes, topic_end: int, messages: int = 1, tag: Any = None) -> None:
        """Queue one local frame (``channel NUL header payload``) for Redis;
        ``messages`` it carries (a batch: counters), ``tag`` for ``on_acked``.

        Never blocks, never raises: the frame waits in the outbound queue
        until the next flush (this loop turn). Host-only frames and frames too
        short to hold a header are ignored. After :meth:`close` it does nothing.
        """
        if len(frame) < topic_end + 1 + HEADER.size or frame[topic_end + 2] & FLAG_HOST_ONLY:
            return
        if self.closing:
            return
        topic = frame[:topic_end]
        head = self._heads.get(topic)
        if head is None:
            head = self._mode.publish_head(topic)
            if len(self._heads) >= _HEADS_MAX:
                self._heads.clear()
            self._heads[topic] = head
        # The value is frame_to_redis(frame, topic_end, node_id), encoded in place.
        size = len(frame) - topic_end + NODE_ID_BYTES
        queue = self.queue
        queue.push(
            b"".join((
                head,
                _LENGTHS[size] if size < 4096 else b"%d\r\n" % size,
                self.stamp,
                frame[topic_end + 1 :],
                b"\r\n",
            )),
            size,
            messages, tag,
        )  # fmt: skip
        if queue.pending_bytes > self._check_at:
            self.flush()  # write now, or keep the backlog within buffer_max_bytes
        elif not self._flush_scheduled and self.pub is not None and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write everything pending; if it cannot be written now, apply the cap."""
        self._flush_scheduled = False
        pub = self.pub
        if pub is None or pub.writing_paused or self.holding or self.loop is None:
            # A reconnect, resume_writing or the end of a hold flushes again.
            self.queue.trim()
            return
        data = self.queue.take(self.loop.time())
        if data is not None:
            pub.write(data)

    def defer_flush(self) -> None:
        """The caller flushes once it has published what is ready: schedule no turn."""
        self._flush_scheduled = True

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def hand_over(self, frames: list[bytes]) -> None:
        """Give frames read from Redis to ``deliver``; its failures are counted and logged."""
        self._received += len(frames)
        try:
            self._deliver(frames)
        except Exception:
            self._deliver_errors += 1
            if self.throttle.allow("deliver"):
                self.log.exception("circus-events: delivering frames from Redis failed")

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Keep both connections up until :meth:`close`. Never raises for Redis trouble."""
        if self.closing:
            return
        self.loop = asyncio.get_running_loop()
        if self._address is None:
            self.log.error(
                "circus-events: not connecting to Redis: %s; fix redis_url and restart the bridge",
                self._config_error,
            )
        else:
            self._tick_task = asyncio.create_task(self._tick(), name="circus-events-redis-tick")
            self._tasks = [
                asyncio.create_task(self._keeper(role).run(), name=f"circus-events-redis-{role}")
                for role in ("pub", "sub")
            ]
            self._tasks.append(self._tick_task)
        try:
            await self._closed.wait()
        finally:
            if not self._closed.is_set():  # cancelled rather than closed
                await self._shutdown(flush=False)

    async def close(self) -> None:
        """Flush briefly, delete the presence record, close both connections. Safe twice."""
        if self.closing:
            await self._closed.wait()
            return
        await self._shutdown(flush=True)

    async def _shutdown(self, *, flush: bool) -> None:
        self.closing = True
        self._closing_event.set()
        try:
            # 1. Stop the periodic work: nothing new gets written.
            if self._tick_task is not None:
                self._tick_task.cancel()
            self._mode.stop_timers()
            self.holding = False
            # 2. Write what is queued, then delete the presence record: its reply
            #    arrives after every earlier reply, so it marks the flush done.
            pub = self.pub
            if flush and pub is not None and pub.is_open:
                self.flush()
                self._mode.final_commands()
                done = self.request(encode_command("DEL", self._presence_key))
                with contextlib.suppress(TimeoutError, ConnectionError):
                    async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                        await done
            # 3. Stop the connection keepers; each closes its own connection.
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            left = self.queue.pending_count
            if left and self._address is not None:
                self.log.warning(
                    "circus-events: closing with %d message(s) not delivered to Redis", left
                )
        finally:
            self.pub = self.sub = None
            self.note_state()
            self._closed.set()

    def _keeper(self, role: str) -> ConnectionKeeper:
        assert self._address is not None
        return ConnectionKeeper(
            self._address,
            client_name(self.config.host, role),
            closing=self._closing_event,
            connected=lambda conn, outage: self._connected(role, conn, outage=outage),
            disconnected=lambda conn, reason, lost: self._disconnected(role, conn, reason, lost),
            failed=lambda exc: self._connect_failed(role, exc),
            throttle=self.throttle,
            logger=self.log,
        )

    def _connected(self, role: str, conn: RespConnection, *, outage: bool) -> None:
        assert self.loop is not None
        self.rtt.restart()
        previous = self._errors[role]
        self._errors[role] = None
        if previous is not None:
            self.log.info(
                "circus-events: Redis %s connection restored (%s)", role, self._address_text
            )
            self.throttle.forget(previous.kind + str(previous))
        if role == "pub":
            conn.set_consumer(self.queue.consume)
            conn.on_writable = self._schedule_flush
            if conn.transport is not None:
                conn.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            self.pub = conn
            self._mode.pub_ready(outage)
            self.flush()
        else:
            self._mode.sub_ready(conn)
        if self._errors["pub"] is None and self._errors["sub"] is None:
            self.last_error = None
        self.note_state()
        self._send_presence()  # a fresh record at every (re)connection

    def _disconnected(
        self, role: str, conn: RespConnection, reason: BaseException | None, lost: bool
    ) -> None:
        self.rtt.restart()
        if role == "pub":
            if self.pub is conn:
                self.pub = None
            self.queue.requeue()  # unanswered messages go out again on the next connection
        else:
            if self.sub is conn:
                self.sub = None
            self._mode.sub_gone(conn)
        self.note_state()
        if not lost:
            return
        self._reconnects += 1
        if isinstance(reason, ConnectionAbortedError):
            return  # we dropped it for silence, and said so
        text = f"Redis {role} connection lost ({reason or 'closed by the server'}); reconnecting"
        self.last_error = text
        if self.throttle.allow(f"lost-{role}"):
            self.log.warning("circus-events: %s", text)

    def _connect_failed(self, role: str, exc: RedisConnectError) -> None:
        self.first_attempt.set()
        self._connect_failures += 1
        self._errors[role] = exc
        self.last_error = str(exc)
        # Both connections usually fail alike: one line per problem per window.
        if self.throttle.allow(exc.kind + str(exc)):
            level = logging.ERROR if exc.misconfigured else logging.WARNING
            self.log.log(
                level,
                "circus-events: Redis connection failed: %s [%s]; retrying every %gs at most",
                exc,
                exc.kind,
                BACKOFF_MAX,
            )

    @property
    def _address_text(self) -> str:
        return self._address.display if self._address is not None else "(no Redis URL)"

    # -- the periodic tick, control commands, presence ----------------------------------

    async def _tick(self) -> None:
        assert self.loop is not None
        loop = self.loop
        interval = self._tick_interval
        self._next_presence = loop.time() + self.config.stats_interval
        last = loop.time()
        while not self.closing:
            await asyncio.sleep(interval)
            now = loop.time()
            # A loop that was blocked has not read its sockets: judge silence next time.
            judge = now - last < interval + 1.0
            last = now
            try:
                self._mode.beat(now, judge=judge)
            except Exception:
                if self.throttle.allow("bug-tick"):
                    self.log.exception("circus-events: unexpected error in the Redis heartbeat")

    def pub_stalled(self, now: float, *, judge: bool) -> bool:
        """pub's oldest command unanswered for :data:`HEARTBEAT_TIMEOUT`: drop it (True)."""
        pub = self.pub
        if pub is None or not judge:
            return False
        oldest = self.queue.oldest_sent()
        if oldest is None or now - max(oldest, pub.last_rx) <= HEARTBEAT_TIMEOUT:
            return False
        self._stalls += 1
        self.note_silence("pub", "Redis stopped answering", HEARTBEAT_TIMEOUT)
        pub.abort("Redis stopped answering")
        return True

    def note_silence(self, role: str, what: str, after: float) -> None:
        self.last_error = f"Redis {role} connection silent for {after:g}s ({what})"
        if self.throttle.allow(f"silent-{role}"):
            self.log.warning("circus-events: %s; reconnecting", self.last_error)

    def foreign_bridge(self, how: str) -> None:
        """Another bridge writes ``how`` under our host name (each would drop the
        other's messages as its own echo): count it, say how to fix it."""
        self._foreign += 1
        if self.throttle.allow(f"foreign-{how}"):
            self.log.warning(
                "circus-events: another bridge %s as host %r in namespace %r;"
                " each host needs its own name (CIRCUS_EVENTS_HOST)",
                how, self.config.host, self.config.namespace,
            )  # fmt: skip

    def presence_due(self, now: float) -> None:
        if now >= self._next_presence:
            self._next_presence = now + self.config.stats_interval
            self._send_presence()

    def command(self, cmd: bytes, callback: ReplyCallback | None = None) -> bool:
        """Send a control command on pub, in order with the messages; False if down."""
        pub = self.pub
        if pub is None or self.loop is None:
            return False
        pub.write(self.queue.control(cmd, callback, self.loop.time()))
        return True

    def request(self, cmd: bytes) -> asyncio.Future[Any]:
        """Send a control command on pub; the future gets its reply."""
        assert self.loop is not None
        done: asyncio.Future[Any] = self.loop.create_future()

        def callback(reply: Any) -> None:
            if done.done():
                return
            if isinstance(reply, ConnectionError):
                done.set_exception(reply)
            else:
                done.set_result(reply)

        if not self.command(cmd, callback):
            done.set_exception(ConnectionError("not connected to Redis"))
        return done

    def _send_presence(self) -> None:
        record = self.presence_record()
        ttl = max(1, math.ceil(PRESENCE_TTL_FACTOR * self.config.stats_interval))
        payload = json.dumps(record, default=str, separators=(",", ":"))
        self.command(
            encode_command("SET", self._presence_key, payload, "EX", ttl), self._presence_stored
        )

    def _publish_refused(self, why: str) -> None:
        self.last_error = why  # counted in publish_errors
        if self.throttle.allow("publish-refused"):
            self.log.warning("circus-events: %s", why)

    def _presence_stored(self, reply: Any) -> None:
        if isinstance(reply, Exception) and not isinstance(reply, ConnectionError):
            self.last_error = f"Redis refused the presence record: {reply}"
            if self.throttle.allow("presence"):
                self.log.warning("circus-events: %s", self.last_error)

    def presence_record(self) -> dict[str, Any]:
        """The JSON-able record other hosts read with :func:`.presence.read_cluster_status`.

        The ``status_provider()`` output (the bridge's own status) at the top
        level, so a record reads like a local ``status``; then this side's
        identity, ``redis`` status and ``heartbeat_rtt_ms`` over it.
        """
        return presence_record(
            self.config,
            self._status_provider,
            started=self._started,
            heartbeat_rtt_ms=self.rtt.ms,
            redis=self._mode.status(),
        )

    # -- status ------------------------------------------------------------------------

    def note_state(self) -> None:
        """A connection came or went, or the subscriptions changed: update the events."""
        connected = self.pub is not None and self.sub is not None and not self.closing
        if connected:
            self.first_attempt.set()
            self.connected_event.set()
        else:
            self.connected_event.clear()
        if not connected or self._mode.subscriptions_settled:
            self.settled_event.set()
        else:
            self.settled_event.clear()

    @property
    def connected(self) -> bool:
        return self.pub is not None and self.sub is not None

    def status(self) -> dict[str, Any]:
        """What every mode reports, JSON-able; the sides add their own keys."""
        queue = self.queue
        if self._closed.is_set() or self.closing:
            state = "closed"
        elif self._address is None:
            state = "config_error"
        elif self.connected:
            state = "connected"
        else:
            error = self._errors["pub"] or self._errors["sub"]
            state = error.kind if error is not None else "connecting"
        return {
            "connected": self.connected and not self.closing,
            "state": state,
            "last_error": self.last_error,
            "url": self._address_text,
            "published": queue.published_now,
            "received": self._received,
            "buffered_messages": queue.pending_count + queue.inflight_count,
            "buffered_bytes": queue.pending_bytes + queue.inflight_bytes,
            "buffer_max_bytes": queue.max_bytes,
            "dropped": queue.dropped,
            "dropped_own": self.check.own,
            "ignored_hosts": self.check.ignored,
            "rejected": self.check.rejected,
            "publish_errors": queue.errors,
            "deliver_errors": self._deliver_errors,
            "reconnects": self._reconnects,
            "heartbeat_rtt_ms": self.rtt.ms,
            "heartbeat_misses": self.hb_misses,
            "stalls": self._stalls,
            "connect_failures": self._connect_failures,
            "foreign_heartbeats": self._foreign,
        }
