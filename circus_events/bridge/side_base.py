"""What both Redis sides share: two connections, the outbound queue, presence.

:class:`RedisSideBase` is the common half of :class:`.redis_side.RedisSide`
(pub/sub mode) and :class:`.stream_side.StreamSide` (stream mode):

* two connections, ``pub`` and ``sub``, each kept open by a
  :class:`.keeper.ConnectionKeeper` (jittered backoff, one log line per
  problem per :data:`.keeper.LOG_REPEAT_INTERVAL`);
* the publish hot path: :meth:`RedisSideBase.publish` encodes one command
  per frame in place (the subclass gives the command's head for a channel)
  and queues it in the :class:`.outbound.OutboundQueue`; one write per loop
  turn; replies are counted, unanswered commands re-sent after a reconnect;
* control commands on ``pub`` in order with the messages, the presence
  record (:mod:`.presence`), ``close()`` with a short flush, and the common
  part of ``status()``.

The subclass decides what the ``sub`` connection does, what its periodic
tick does, and adds its own status keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, Final

from .._config import BridgeConfig
from .._exceptions import ConfigError
from ..protocol.envelope import FLAG_HOST_ONLY, HEADER, NODE_ID_BYTES, REDIS_VERSION
from .keeper import BACKOFF_MAX, ConnectionKeeper, LogThrottle
from .outbound import OutboundQueue, ReplyCallback
from .presence import PRESENCE_TTL_FACTOR, redis_names
from .resp import RedisAddress, RedisConnectError, RespConnection, encode_command

__all__ = [
    "CLOSE_FLUSH_TIMEOUT",
    "FLUSH_BYTES",
    "MIN_VALUE",
    "STAMP_OFFSET",
    "WRITE_BUFFER_HIGH",
    "RedisSideBase",
    "client_name",
    "origin_host",
]

#: Flush inside publish() once this many value bytes are pending (or the cap, if lower).
FLUSH_BYTES: Final = 256 * 1024
#: Transport write buffer above which flushing pauses (pending grows, capped).
WRITE_BUFFER_HIGH: Final = 4 * 1024 * 1024
#: close() waits this long for queued messages to reach Redis.
CLOSE_FLUSH_TIMEOUT: Final = 1.0

#: Where the envelope header starts in a Redis value (after version and node id).
STAMP_OFFSET: Final = 1 + NODE_ID_BYTES
#: The shortest Redis value that can hold a message.
MIN_VALUE: Final = STAMP_OFFSET + HEADER.size
#: Pre-encoded "<len>\r\n" for the value lengths of typical events.
_LENGTHS: Final = [b"%d\r\n" % n for n in range(4096)]
_HEADS_MAX: Final = 4096


def client_name(host: str, role: str) -> str:
    """The ``CLIENT SETNAME`` of a bridge connection: ``circus-events:<host>:<role>``."""
    # CLIENT SETNAME refuses spaces and non-printable characters.
    safe = "".join(c if "!" <= c <= "~" else "_" for c in host)
    return f"circus-events:{safe}:{role}"


def _version() -> str:
    try:
        return importlib.metadata.version("circus-events")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def origin_host(value: bytes) -> bytes:
    """The origin host of a Redis value (already length-checked)."""
    n_origin = value[STAMP_OFFSET + 3]
    n_host = value[STAMP_OFFSET + 4]
    start = MIN_VALUE + n_origin
    return value[start : start + n_host]


class RedisSideBase:
    """Both Redis connections of one bridge: the part every mode shares.

    Subclasses implement :meth:`_publish_head`, :meth:`_setup_sub`,
    :meth:`_beat` and may extend the other hooks (see each one).
    """

    #: Seconds between calls of :meth:`_beat`.
    _tick_interval: float = 1.0
    #: ``OutboundQueue`` reply class and command name of one message.
    _reply_type: type = int
    _command_name: str = "PUBLISH"

    def __init__(
        self,
        config: BridgeConfig,
        *,
        deliver: Callable[[list[bytes]], None],
        status_provider: Callable[[], dict[str, Any]] | None,
        logger: logging.Logger,
    ) -> None:
        self.config = config
        self._deliver = deliver
        self._status_provider = status_provider
        self._log = logger
        self._address: RedisAddress | None = None
        self._config_error: str | None = None
        # The URL was checked when the config was made; this stays for a config
        # without one (the state then reads "config_error").
        self._address = config.redis_address
        if self._address is None:
            self._config_error = str(ConfigError("redis_url", "no Redis URL is configured"))
        names = redis_names(config)
        self._base = names.base
        self._base_len = len(names.base)
        self._presence_key = names.presence
        self._stamp = bytes((REDIS_VERSION,)) + config.node_id
        self._ignore = frozenset(h.encode("utf-8") for h in config.ignore_hosts) or None
        self._heads: dict[bytes, bytes] = {}
        self._queue = OutboundQueue(
            config.buffer_max_bytes, reply_type=self._reply_type, command=self._command_name
        )
        #: publish() calls _flush() past this many pending bytes.
        self._check_at = min(FLUSH_BYTES, config.buffer_max_bytes)
        self._pub: RespConnection | None = None
        self._sub: RespConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        #: While True, pending messages wait (pub/sub mode's post-outage hold).
        self._holding = False
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
        self._hb_rtt_ms: float | None = None
        self._deliver_errors = 0
        self._connect_failures = 0

    # -- the hot path ----------------------------------------------------------------

    def publish(self, frame: bytes, topic_end: int, messages: int = 1) -> None:
        """Queue one local frame (``channel NUL header payload``) for Redis;
        ``messages`` is how many it carries (a batch), for the counters.

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
            if len(self._heads) >= _HEADS_MAX:
                self._heads.clear()
            self._heads[topic] = head
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
            messages,
        )  # fmt: skip
        if queue.pending_bytes > self._check_at:
            self._flush()  # write now, or keep the backlog within buffer_max_bytes
        elif not self._flush_scheduled and self._pub is not None and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _publish_head(self, topic: bytes) -> bytes:
        """The encoded command for a message on ``topic``, up to its value's ``$``."""
        raise NotImplementedError

    def _flush(self) -> None:
        """Write everything pending; if it cannot be written now, apply the cap."""
        self._flush_scheduled = False
        pub = self._pub
        if pub is None or pub.writing_paused or self._holding or self._loop is None:
            # A reconnect, resume_writing or the end of a hold flushes again.
            self._queue.trim()
            return
        data = self._queue.take(self._loop.time())
        if data is not None:
            pub.write(data)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _hand_over(self, frames: list[bytes]) -> None:
        """Give frames read from Redis to ``deliver``; its failures are counted and logged."""
        self._received += len(frames)
        try:
            self._deliver(frames)
        except Exception:
            self._deliver_errors += 1
            if self._throttle.allow("deliver"):
                self._log.exception("circus-events: delivering frames from Redis failed")

    # -- lifecycle ---------------------------------------------------------------------

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

    def _stop_timers(self) -> None:
        """Closing: cancel the subclass' timers (the tick task is cancelled already)."""

    def _final_commands(self) -> None:
        """Closing with pub open: send the subclass' last commands before the presence DEL."""

    async def _shutdown(self, *, flush: bool) -> None:
        self._closing = True
        self._closing_event.set()
        try:
            # 1. Stop the periodic work: nothing new gets written.
            if self._tick_task is not None:
                self._tick_task.cancel()
            self._stop_timers()
            self._holding = False
            # 2. Write what is queued, then delete the presence record: its reply
            #    arrives after every earlier reply, so it marks the flush done.
            pub = self._pub
            if flush and pub is not None and pub.is_open:
                self._flush()
                self._final_commands()
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
            client_name(self.config.host, role),
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
            self._pub_connected(outage)
            self._flush()
        else:
            self._setup_sub(conn)
        if self._errors["pub"] is None and self._errors["sub"] is None:
            self._last_error = None
        self._send_presence()  # a fresh record at every (re)connection

    def _pub_connected(self, outage: bool) -> None:
        """pub is up (``self._pub`` is set); called just before the first flush."""

    def _setup_sub(self, conn: RespConnection) -> None:
        """A new sub connection: make it ``self._sub`` once it serves."""
        raise NotImplementedError

    def _sub_gone(self, conn: RespConnection) -> None:
        """The sub connection ``conn`` is closed (lost, or closing)."""

    def _disconnected(
        self, role: str, conn: RespConnection, reason: BaseException | None, lost: bool
    ) -> None:
        if role == "pub":
            if self._pub is conn:
                self._pub = None
            self._queue.requeue()  # unanswered messages go out again on the next connection
        else:
            if self._sub is conn:
                self._sub = None
            self._sub_gone(conn)
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

    # -- the periodic tick, control commands, presence ----------------------------------

    async def _tick(self) -> None:
        assert self._loop is not None
        loop = self._loop
        interval = self._tick_interval
        self._next_presence = loop.time() + self.config.stats_interval
        last = loop.time()
        while not self._closing:
            await asyncio.sleep(interval)
            now = loop.time()
            # A loop that was blocked has not read its sockets: judge silence next time.
            judge = now - last < interval + 1.0
            last = now
            try:
                self._beat(now, judge=judge)
            except Exception:
                if self._throttle.allow("bug-tick"):
                    self._log.exception("circus-events: unexpected error in the Redis heartbeat")

    def _beat(self, now: float, *, judge: bool) -> None:
        """Every ``_tick_interval``: liveness checks, heartbeats, presence when due."""
        raise NotImplementedError

    def _presence_due(self, now: float) -> None:
        if now >= self._next_presence:
            self._next_presence = now + self.config.stats_interval
            self._send_presence()

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
        """The JSON-able record other hosts read with :func:`.presence.read_cluster_status`.

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
        """Counters and state, JSON-able (see the subclass for its own keys)."""
        return self._common_status()

    def _common_status(self) -> dict[str, Any]:
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
            "deliver_errors": self._deliver_errors,
            "reconnects": self._reconnects,
            "heartbeat_rtt_ms": self._hb_rtt_ms,
            "heartbeat_misses": self._hb_misses,
            "stalls": self._stalls,
            "connect_failures": self._connect_failures,
        }
