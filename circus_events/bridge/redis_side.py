"""The Redis side of the bridge, pub/sub mode: relay frames between hosts.

Theory of operation
-------------------
Two connections per bridge, named ``circus-events:<host>:pub`` and
``circus-events:<host>:sub`` (see ``CLIENT LIST``):

* **pub** carries every ``PUBLISH``, pipelined: :meth:`RedisSide.publish`
  encodes the command and queues it (no I/O); one flush per loop turn (or
  every :data:`FLUSH_BYTES`) writes the whole queue at once; replies are
  counted as they come (:mod:`.outbound`). Heartbeats and the presence
  record go over it too.
* **sub** carries ``SUBSCRIBE``/``PSUBSCRIBE`` for local interest
  (:mod:`.subscriptions`) and the bridge's heartbeat channel. Messages are
  filtered (own echo, ignored hosts, malformed) and handed to ``deliver`` as
  one list per read.

Redis names: channel ``<redis_prefix>:<namespace>:<channel>``, heartbeat
channel ``...:@hb:<node id hex>``, presence key ``...:@presence:<host>``.

Failures: each connection reconnects on its own with jittered exponential
backoff (:data:`BACKOFF_INITIAL` to :data:`BACKOFF_MAX`). While pub is down,
frames wait in the outbound queue (bounded by ``buffer_max_bytes``, oldest
dropped and counted); unanswered ones are re-sent after the reconnect
(at least once to Redis). After an outage the backlog is held for
:data:`RESUME_GRACE` so the other bridges, which retry at least every
:data:`BACKOFF_MAX`, have resubscribed before it is published: pub/sub keeps
nothing for a subscriber that is not there.

Liveness: every :data:`HEARTBEAT_INTERVAL` the bridge publishes a heartbeat
to its own channel (or PINGs the subscriber while pub is down). A subscriber
that receives nothing for :data:`HEARTBEAT_TIMEOUT` (killed for its output
buffer, half-open TCP, Redis paused) is reopened and resubscribed; a
publisher whose oldest command has no reply for as long is reopened too.

Errors never leave :meth:`RedisSide.run`: they go to ``status()`` and to
one log line per problem per :data:`LOG_REPEAT_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

from .._config import BridgeConfig
from .._exceptions import ConfigError
from ..protocol.envelope import FLAG_HOST_ONLY, HEADER, NODE_ID_BYTES, REDIS_VERSION, VERSION
from ..protocol.topics import SubscriptionTopic
from .keeper import BACKOFF_INITIAL, BACKOFF_MAX, LOG_REPEAT_INTERVAL, ConnectionKeeper, LogThrottle
from .outbound import OutboundQueue, ReplyCallback
from .presence import PRESENCE_TTL_FACTOR, read_cluster_status, redis_names
from .resp import (
    RedisAddress,
    RedisConnectError,
    RespConnection,
    encode_command,
    parse_redis_url,
)
from .subscriptions import RedisSubscriptions

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "FLUSH_BYTES",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "LOG_REPEAT_INTERVAL",
    "RESUME_GRACE",
    "RedisSide",
    "read_cluster_status",
    "redis_names",
]

log = logging.getLogger("circus_events.redis")

HEARTBEAT_INTERVAL: Final = 1.0
#: No heartbeat (or any byte) back for this long: the connection is dead.
HEARTBEAT_TIMEOUT: Final = 3.0
#: After an outage, buffered messages wait this long once pub is back.
RESUME_GRACE: Final = BACKOFF_MAX + 0.5
#: Flush inside publish() once this many value bytes are pending (or the cap, if lower).
FLUSH_BYTES: Final = 256 * 1024
#: Transport write buffer above which flushing pauses (pending grows, capped).
WRITE_BUFFER_HIGH: Final = 4 * 1024 * 1024
#: close() waits this long for queued messages to reach Redis.
CLOSE_FLUSH_TIMEOUT: Final = 1.0

_STAMP_OFFSET: Final = 1 + NODE_ID_BYTES
_MIN_VALUE: Final = _STAMP_OFFSET + HEADER.size
#: Pre-encoded "<len>\r\n" for the value lengths of typical events.
_LENGTHS: Final = [b"%d\r\n" % n for n in range(4096)]
_PUBLISH: Final = b"*3\r\n$7\r\nPUBLISH\r\n"
_HEADS_MAX: Final = 4096


def _client_name(host: str, role: str) -> str:
    # CLIENT SETNAME refuses spaces and non-printable characters.
    safe = "".join(c if "!" <= c <= "~" else "_" for c in host)
    return f"circus-events:{safe}:{role}"


def _version() -> str:
    try:
        return importlib.metadata.version("circus-events")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


class RedisSide:
    """Both Redis connections of one bridge, with buffering, liveness and presence.

    * :meth:`publish` (sync, never blocks or raises) queues a local frame;
      it reaches Redis at the end of the loop turn. Delivery *to Redis* is at
      least once: commands written to a connection that dies before
      answering are sent again, in order, on the next one; receivers drop the
      rare duplicate by sequence number. Between hosts pub/sub stays at most
      once: a host that is not subscribed at that moment misses the frame.
    * ``deliver(frames)`` is called on the loop, once per read, with the
      local frames (``channel NUL header payload``) that other hosts sent;
      own echoes, ``ignore_hosts`` and malformed values are already dropped
      (counted in ``status()``). An exception in it is logged and counted.
    * :meth:`run` keeps both connections up until :meth:`close`; Redis
      trouble never raises out of it. Cancelling it closes without a flush.
    * :meth:`close` (safe twice) writes what is queued, deletes the presence
      record, waits up to :data:`CLOSE_FLUSH_TIMEOUT` for Redis to answer,
      and closes both connections; :meth:`publish` is then a no-op.
    """

    def __init__(
        self,
        config: BridgeConfig,
        *,
        deliver: Callable[[list[bytes]], None],
        status_provider: Callable[[], dict[str, Any]] | None = None,
        logger: logging.Logger | None = None,
        resume_grace: float = RESUME_GRACE,
    ) -> None:
        self.config = config
        self._deliver = deliver
        self._status_provider = status_provider
        self._log = logger or log
        self._resume_grace = resume_grace
        self._address: RedisAddress | None = None
        self._config_error: str | None = None
        try:
            if not config.redis_url:
                raise ConfigError("redis_url", "no Redis URL is configured")
            self._address = parse_redis_url(config.redis_url)
        except ConfigError as exc:
            self._config_error = str(exc)
        names = redis_names(config)
        self._base = names.base
        self._base_len = len(names.base)
        self._hb_channel = names.heartbeat
        self._hb_prefix = names.heartbeat_prefix
        self._presence_key = names.presence
        self._stamp = bytes((REDIS_VERSION,)) + config.node_id
        self._ignore = frozenset(h.encode("utf-8") for h in config.ignore_hosts) or None
        self._token = secrets.token_hex(6).encode()
        self._heads: dict[bytes, bytes] = {}
        self._queue = OutboundQueue(config.buffer_max_bytes)
        #: publish() calls _flush() past this many pending bytes.
        self._check_at = min(FLUSH_BYTES, config.buffer_max_bytes)
        self._subs = RedisSubscriptions(self._base, [self._hb_channel])
        self._pub: RespConnection | None = None
        self._sub: RespConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._subscribe_scheduled = False
        #: After an outage: the backlog waits (see RESUME_GRACE).
        self._holding = False
        self._hold_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._closing_event = asyncio.Event()
        self._closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._tick_task: asyncio.Task[None] | None = None
        self._next_presence = 0.0
        self._started = time.monotonic()
        # Problems and their log throttle.
        self._errors: dict[str, RedisConnectError | None] = {"pub": None, "sub": None}
        self._last_error: str | None = self._config_error
        self._throttle = LogThrottle()
        # Counters (see status()).
        self._received = 0
        self._dropped_own = 0
        self._ignored = 0
        self._rejected = 0
        self._reconnects = 0
        self._hb_misses = 0
        self._stalls = 0
        self._hb_seq = 0
        self._hb_rtt_ms: float | None = None
        self._foreign_hb = 0
        self._deliver_errors = 0
        self._sub_errors = 0
        self._connect_failures = 0

    # -- the hot paths -------------------------------------------------------------

    def publish(self, frame: bytes, topic_end: int) -> None:
        """Queue one local frame (``channel NUL header payload``) for Redis.

        Never blocks, never raises: the frame waits in the outbound queue
        until the next flush (this loop turn). Host-only frames and frames too
        short to hold a header are ignored. After :meth:`close` it does nothing.
        """
        if len(frame) < topic_end + 1 + HEADER.size or frame[topic_end + 2] & FLAG_HOST_ONLY:
            return
        if self._closing:
            return
        topic = frame[:topic_end]
        head = self._heads.get(topic)
        if head is None:
            head = self._publish_head(topic)
        # The value is frame_to_redis(frame, topic_end, node_id), encoded in place.
        size = len(frame) - topic_end + NODE_ID_BYTES
        queue = self._queue
        queue.push(
            b"".join((
                head,
                _LENGTHS[size] if size < 4096 else b"%d\r\n" % size,
                self._stamp,
                frame[topic_end + 1 :],
                b"\r\n",
            )),
            size,
        )  # fmt: skip
        if queue.pending_bytes > self._check_at:
            self._flush()  # write now, or keep the backlog within buffer_max_bytes
        elif not self._flush_scheduled and self._pub is not None and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _publish_head(self, topic: bytes) -> bytes:
        channel = self._base + topic
        head = b"%b$%d\r\n%b\r\n$" % (_PUBLISH, len(channel), channel)
        if len(self._heads) >= _HEADS_MAX:
            self._heads.clear()
        self._heads[topic] = head
        return head

    def _flush(self) -> None:
        """Write everything pending; if it cannot be written now, apply the cap."""
        self._flush_scheduled = False
        pub = self._pub
        if pub is None or pub.writing_paused or self._holding or self._loop is None:
            # A reconnect, resume_writing or the end of the hold flushes again.
            self._queue.trim()
            return
        data = self._queue.take(self._loop.time())
        if data is not None:
            pub.write(data)

    def _hold(self, delay: float) -> None:
        assert self._loop is not None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self._holding = True
        self._hold_timer = self._loop.call_later(delay, self._release)

    def _release(self) -> None:
        self._hold_timer = None
        self._holding = False
        self._flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _consume_sub(self, reader: Any) -> None:
        """Turn everything readable on the subscriber into one ``deliver`` call."""
        frames: list[bytes] = []
        append = frames.append
        gets = reader.gets
        stamp = self._stamp
        base_len = self._base_len
        hb_channel = self._hb_channel
        ignore = self._ignore
        dropped_own = rejected = ignored = 0
        while True:
            reply = gets()
            if reply is False:
                break
            if reply.__class__ is not list:
                self._sub_reply_error(reply)
                continue
            size = len(reply)
            if size == 3 and reply[0] == b"message":
                channel = reply[1]
                value = reply[2]
                if channel == hb_channel:
                    self._heartbeat_back(value)
                    continue
            elif size == 4 and reply[0] == b"pmessage":
                channel = reply[2]
                value = reply[3]
                if channel.startswith(self._hb_prefix) or not self._subs.owns(reply[1], channel):
                    continue
            else:
                self._sub_event(reply)
                continue
            if value.startswith(stamp):
                dropped_own += 1
                continue
            if (
                len(value) < _MIN_VALUE
                or value[0] != REDIS_VERSION
                or value[_STAMP_OFFSET] != VERSION
            ):
                rejected += 1
                continue
            if ignore is not None and _origin_host(value) in ignore:
                ignored += 1
                continue
            # Same bytes as frame_from_redis(channel, value)[1], without the tuple.
            append(b"".join((channel[base_len:], b"\0", value[_STAMP_OFFSET:])))
        self._dropped_own += dropped_own
        self._rejected += rejected
        self._ignored += ignored
        if frames:
            self._received += len(frames)
            try:
                self._deliver(frames)
            except Exception:
                self._deliver_errors += 1
                if self._throttle.allow("deliver"):
                    self._log.exception("circus-events: delivering frames from Redis failed")

    def _sub_event(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind in (b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"):
            self._subs.confirm(kind, reply[1])
        # b"pong" needs nothing: any byte received proves the connection alive.

    def _sub_reply_error(self, reply: Any) -> None:
        self._sub_errors += 1
        self._last_error = f"Redis refused a subscription command: {reply}"
        if self._throttle.allow("sub-error"):
            self._log.error("circus-events: %s", self._last_error)

    # -- interest -------------------------------------------------------------------

    def add_interest(self, topic: SubscriptionTopic) -> None:
        """A local worker subscribed to ``topic`` (exact channel or prefix)."""
        if self._subs.add(topic):
            self._schedule_subscribe()

    def remove_interest(self, topic: SubscriptionTopic) -> None:
        """No local worker wants ``topic`` any more."""
        if self._subs.remove(topic):
            self._schedule_subscribe()

    def is_subscribed(self, topic: SubscriptionTopic) -> bool:
        """Redis has confirmed ``topic`` on the live subscriber: other hosts' frames arrive."""
        return self._sub is not None and self._subs.is_confirmed(topic)

    @property
    def subscriptions_settled(self) -> bool:
        """True when connected and Redis has confirmed every current interest."""
        return self._sub is not None and self._subs.settled

    def _schedule_subscribe(self) -> None:
        # Changes made in one loop turn go out as one write.
        if not self._subscribe_scheduled and self._sub is not None and self._loop is not None:
            self._subscribe_scheduled = True
            self._loop.call_soon(self._send_subscriptions)

    def _send_subscriptions(self) -> None:
        self._subscribe_scheduled = False
        if self._sub is not None:
            data = self._subs.commands()
            if data:
                self._sub.write(data)

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Keep both connections up until :meth:`close`. Never raises for Redis trouble."""
        if self._closing:
            return
        self._loop = asyncio.get_running_loop()
        if self._address is None:
            self._log.error(
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
        if self._closing:
            await self._closed.wait()
            return
        await self._shutdown(flush=True)

    async def _shutdown(self, *, flush: bool) -> None:
        self._closing = True
        self._closing_event.set()
        try:
            # 1. Stop heartbeats and presence renewals: nothing new gets written.
            if self._tick_task is not None:
                self._tick_task.cancel()
            if self._hold_timer is not None:
                self._hold_timer.cancel()
            self._holding = False
            # 2. Write what is queued, then delete the presence record: its reply
            #    arrives after every earlier PUBLISH reply, so it marks the flush done.
            pub = self._pub
            if flush and pub is not None and pub.is_open:
                self._flush()
                done = self._pub_request(encode_command("DEL", self._presence_key))
                with contextlib.suppress(TimeoutError, ConnectionError):
                    async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                        await done
            # 3. Stop the connection keepers; each closes its own connection.
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            left = self._queue.pending_count
            if left and self._address is not None:
                self._log.warning(
                    "circus-events: closing with %d message(s) not delivered to Redis", left
                )
        finally:
            self._pub = self._sub = None
            self._closed.set()

    def _keeper(self, role: str) -> ConnectionKeeper:
        assert self._address is not None
        return ConnectionKeeper(
            self._address,
            _client_name(self.config.host, role),
            closing=self._closing_event,
            connected=lambda conn, outage: self._connected(role, conn, outage=outage),
            disconnected=lambda conn, reason, lost: self._disconnected(role, conn, reason, lost),
            failed=lambda exc: self._connect_failed(role, exc),
            throttle=self._throttle,
            logger=self._log,
        )

    def _connected(self, role: str, conn: RespConnection, *, outage: bool) -> None:
        assert self._loop is not None
        previous = self._errors[role]
        self._errors[role] = None
        if previous is not None:
            self._log.info(
                "circus-events: Redis %s connection restored (%s)", role, self._address_text
            )
            self._throttle.forget(previous.kind + str(previous))
        if role == "pub":
            conn.set_consumer(self._queue.consume)
            conn.on_writable = self._schedule_flush
            if conn.transport is not None:
                conn.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            self._pub = conn
            if outage and self._queue.pending_count and self._resume_grace > 0:
                self._hold(self._resume_grace)
            self._flush()
        else:
            conn.set_consumer(self._consume_sub)
            self._sub = conn
            self._subs.reset()
            self._send_subscriptions()
        if self._errors["pub"] is None and self._errors["sub"] is None:
            self._last_error = None
        self._send_presence()  # a fresh record at every (re)connection

    def _disconnected(
        self, role: str, conn: RespConnection, reason: BaseException | None, lost: bool
    ) -> None:
        if role == "pub":
            if self._pub is conn:
                self._pub = None
            self._queue.requeue()  # unanswered messages go out again on the next connection
        elif self._sub is conn:
            self._sub = None
        if not lost:
            return
        self._reconnects += 1
        if isinstance(reason, ConnectionAbortedError):
            return  # we dropped it for silence, and said so
        text = f"Redis {role} connection lost ({reason or 'closed by the server'}); reconnecting"
        self._last_error = text
        if self._throttle.allow(f"lost-{role}"):
            self._log.warning("circus-events: %s", text)

    def _connect_failed(self, role: str, exc: RedisConnectError) -> None:
        self._connect_failures += 1
        self._errors[role] = exc
        self._last_error = str(exc)
        # Both connections usually fail alike: one line per problem per window.
        if self._throttle.allow(exc.kind + str(exc)):
            level = logging.ERROR if exc.kind in ("auth_failed", "tls_failed") else logging.WARNING
            self._log.log(
                level,
                "circus-events: Redis connection failed: %s [%s]; retrying every %gs at most",
                exc,
                exc.kind,
                BACKOFF_MAX,
            )

    @property
    def _address_text(self) -> str:
        return self._address.display if self._address is not None else "(no Redis URL)"

    # -- heartbeat, liveness, presence -------------------------------------------------

    async def _tick(self) -> None:
        assert self._loop is not None
        loop = self._loop
        self._next_presence = loop.time() + self.config.stats_interval
        last = loop.time()
        while not self._closing:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            now = loop.time()
            # A loop that was blocked has not read its sockets: judge silence next time.
            judge = now - last < HEARTBEAT_INTERVAL + 1.0
            last = now
            try:
                self._beat(now, judge=judge)
            except Exception:
                if self._throttle.allow("bug-tick"):
                    self._log.exception("circus-events: unexpected error in the Redis heartbeat")

    def _beat(self, now: float, *, judge: bool) -> None:
        """One heartbeat: check both connections, publish, renew presence when due."""
        pub, sub = self._pub, self._sub
        if sub is not None:
            if judge and now - sub.last_rx > HEARTBEAT_TIMEOUT:
                self._hb_misses += 1
                self._note_silence("sub", "no heartbeat came back")
                sub.abort("no heartbeat came back")
            elif pub is None:
                sub.write(encode_command("PING"))
        if pub is None:
            return
        oldest = self._queue.oldest_sent()
        if judge and oldest is not None and now - max(oldest, pub.last_rx) > HEARTBEAT_TIMEOUT:
            self._stalls += 1
            self._note_silence("pub", "Redis stopped answering")
            pub.abort("Redis stopped answering")
            return
        self._hb_seq += 1
        value = b"%b:%d:%.6f" % (self._token, self._hb_seq, now)
        self._pub_command(encode_command("PUBLISH", self._hb_channel, value))
        if now >= self._next_presence:
            self._next_presence = now + self.config.stats_interval
            self._send_presence()

    def _note_silence(self, role: str, what: str) -> None:
        self._last_error = f"Redis {role} connection silent for {HEARTBEAT_TIMEOUT:g}s ({what})"
        if self._throttle.allow(f"silent-{role}"):
            self._log.warning("circus-events: %s; reconnecting", self._last_error)

    def _heartbeat_back(self, value: bytes) -> None:
        token, _, rest = value.partition(b":")
        if token != self._token:
            self._foreign_hb += 1
            if self._throttle.allow("foreign-hb"):
                self._log.warning(
                    "circus-events: another bridge publishes heartbeats as host %r in namespace %r;"
                    " each host needs its own name (CIRCUS_EVENTS_HOST)",
                    self.config.host, self.config.namespace,
                )  # fmt: skip
            return
        with contextlib.suppress(ValueError):
            sent = float(rest.partition(b":")[2])
            if self._loop is not None:
                self._hb_rtt_ms = round((self._loop.time() - sent) * 1000.0, 3)

    def _pub_command(self, cmd: bytes, callback: ReplyCallback | None = None) -> bool:
        """Send a control command on pub, in order with the messages; False if down."""
        pub = self._pub
        if pub is None or self._loop is None:
            return False
        pub.write(self._queue.control(cmd, callback, self._loop.time()))
        return True

    def _pub_request(self, cmd: bytes) -> asyncio.Future[Any]:
        """Send a control command on pub; the future gets its reply."""
        assert self._loop is not None
        done: asyncio.Future[Any] = self._loop.create_future()

        def callback(reply: Any) -> None:
            if done.done():
                return
            if isinstance(reply, ConnectionError):
                done.set_exception(reply)
            else:
                done.set_result(reply)

        if not self._pub_command(cmd, callback):
            done.set_exception(ConnectionError("not connected to Redis"))
        return done

    def _send_presence(self) -> None:
        record = self.presence_record()
        ttl = max(1, math.ceil(PRESENCE_TTL_FACTOR * self.config.stats_interval))
        payload = json.dumps(record, default=str, separators=(",", ":"))
        self._pub_command(
            encode_command("SET", self._presence_key, payload, "EX", ttl), self._presence_stored
        )

    def _presence_stored(self, reply: Any) -> None:
        if isinstance(reply, Exception) and not isinstance(reply, ConnectionError):
            self._last_error = f"Redis refused the presence record: {reply}"
            if self._throttle.allow("presence"):
                self._log.warning("circus-events: %s", self._last_error)

    def presence_record(self) -> dict[str, Any]:
        """The JSON-able record other hosts read with :func:`read_cluster_status`.

        The ``status_provider()`` output (the bridge's own status) at the top
        level, so a record reads like a local ``status``; then this side's
        identity, ``redis`` status and ``heartbeat_rtt_ms`` over it.
        """
        record: dict[str, Any] = {}
        if self._status_provider is not None:
            try:
                record.update(self._status_provider())
            except Exception as exc:
                record["last_error"] = f"bridge status unavailable: {exc!r}"
        record.setdefault("uptime", time.monotonic() - self._started)
        record.update(
            host=self.config.host,
            node_id=self.config.node_id.hex(),
            namespace=self.config.namespace,
            version=_version(),
            pid=os.getpid(),
            time=time.time(),
            stats_interval=self.config.stats_interval,
            heartbeat_rtt_ms=self._hb_rtt_ms,
            redis=self.status(),
        )
        return record

    # -- status ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._pub is not None and self._sub is not None

    def status(self) -> dict[str, Any]:
        """Counters and state, JSON-able. ``state``: connected, connecting,
        unreachable, timeout, auth_failed, tls_failed, loading, redis_error,
        config_error, closed."""
        queue = self._queue
        if self._closed.is_set() or self._closing:
            state = "closed"
        elif self._address is None:
            state = "config_error"
        elif self.connected:
            state = "connected"
        else:
            error = self._errors["pub"] or self._errors["sub"]
            state = error.kind if error is not None else "connecting"
        return {
            "connected": self.connected and not self._closing,
            "state": state,
            "last_error": self._last_error,
            "url": self._address_text,
            "published": queue.published_now,
            "received": self._received,
            "buffered_messages": queue.pending_count + queue.inflight_count,
            "buffered_bytes": queue.pending_bytes + queue.inflight_bytes,
            "buffer_max_bytes": queue.max_bytes,
            "dropped": queue.dropped,
            "dropped_own": self._dropped_own,
            "ignored_hosts": self._ignored,
            "rejected": self._rejected,
            "publish_errors": queue.errors,
            "subscribe_errors": self._sub_errors,
            "deliver_errors": self._deliver_errors,
            "reconnects": self._reconnects,
            "heartbeat_rtt_ms": self._hb_rtt_ms,
            "heartbeat_misses": self._hb_misses,
            "stalls": self._stalls,
            "foreign_heartbeats": self._foreign_hb,
            "subscriptions": self._subs.count,
            "subscriptions_settled": self._sub is not None and self._subs.settled,
            "connect_failures": self._connect_failures,
        }


def _origin_host(value: bytes) -> bytes:
    """The origin host of a Redis value (already length-checked)."""
    n_origin = value[_STAMP_OFFSET + 3]
    n_host = value[_STAMP_OFFSET + 4]
    start = _MIN_VALUE + n_origin
    return value[start : start + n_host]
