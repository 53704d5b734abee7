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
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final, Unpack

from .._config import BridgeConfig
from .._exceptions import BridgeError
from ..protocol.topics import MAX_TOPIC_BYTES, SubscriptionTopic
from .keeper import BACKOFF_INITIAL, BACKOFF_MAX, LOG_REPEAT_INTERVAL
from .link import (
    CLOSE_FLUSH_TIMEOUT,
    FLUSH_BYTES,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    WRITE_BUFFER_HIGH,
    LinkKind,
    RedisLink,
    SideWiring,
)
from .presence import read_cluster_status, redis_names
from .resp import RespConnection, encode_command
from .side import LinkedSide
from .subscriptions import RedisSubscriptions
from .values import STAMP_OFFSET

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "CLOSE_FLUSH_TIMEOUT",
    "FLUSH_BYTES",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "LOG_REPEAT_INTERVAL",
    "RESUME_GRACE",
    "WRITE_BUFFER_HIGH",
    "RedisSide",
    "read_cluster_status",
    "redis_names",
]

log = logging.getLogger("circus_events.redis")

_KIND: Final = LinkKind(HEARTBEAT_INTERVAL, int, "PUBLISH")

#: After an outage, buffered messages wait this long once pub is back.
RESUME_GRACE: Final = BACKOFF_MAX + 0.5

_PUBLISH: Final = b"*3\r\n$7\r\nPUBLISH\r\n"


class RedisSide(LinkedSide):
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

    def __init__(self, config: BridgeConfig, **wiring: Unpack[SideWiring]) -> None:
        super().__init__(RedisLink(config, self, _KIND, **wiring))
        self._resume_grace = wiring.get("resume_grace", RESUME_GRACE)
        names = redis_names(config)
        self._hb_channel = names.heartbeat
        self._hb_prefix = names.heartbeat_prefix
        self._token = secrets.token_hex(6).encode()
        self._subs = RedisSubscriptions(self._link.base, [self._hb_channel])
        self._subscribe_scheduled = False
        self._hold_timer: asyncio.TimerHandle | None = None
        self._hb_seq = 0
        self._sub_errors = 0

    # -- the hot paths -------------------------------------------------------------

    def publish_head(self, topic: bytes) -> bytes:
        channel = self._link.base + topic
        return b"%b$%d\r\n%b\r\n$" % (_PUBLISH, len(channel), channel)

    def _hold(self, delay: float) -> None:
        assert self._link.loop is not None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self._link.holding = True
        self._hold_timer = self._link.loop.call_later(delay, self._release)

    def _release(self) -> None:
        self._hold_timer = None
        self._link.holding = False
        self._link.flush()

    def _consume_sub(self, reader: Any) -> None:
        """Turn everything readable on the subscriber into one ``deliver`` call."""
        frames: list[bytes] = []
        append = frames.append
        gets = reader.gets
        admit = self._link.check.admit
        base_len = self._link.base_len
        hb_channel = self._hb_channel
        longest = base_len + MAX_TOPIC_BYTES
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
                if len(channel) > longest:  # no bus's name: never a key of owns()'s cache
                    self._link.check.rejected += 1
                    continue
                if channel.startswith(self._hb_prefix) or not self._subs.owns(reply[1], channel):
                    continue
            else:
                self._sub_event(reply)
                continue
            if admit(value):
                # Same bytes as frame_from_redis(channel, value)[1], without the tuple.
                append(b"".join((channel[base_len:], b"\0", value[STAMP_OFFSET:])))
        if frames:
            self._link.hand_over(frames)

    def _sub_event(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind in (b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"):
            self._subs.confirm(kind, reply[1])
            self._link.note_state()
        # b"pong" needs nothing: any byte received proves the connection alive.

    def _sub_reply_error(self, reply: Any) -> None:
        self._sub_errors += 1
        self._link.last_error = f"Redis refused a subscription command: {reply}"
        if self._link.throttle.allow("sub-error"):
            self._link.log.error("circus-events: %s", self._link.last_error)

    # -- interest -------------------------------------------------------------------

    def add_interest(self, topic: SubscriptionTopic) -> None:
        """A local worker subscribed to ``topic`` (exact channel or prefix)."""
        if self._subs.add(topic):
            self._link.note_state()
            self._schedule_subscribe()

    def remove_interest(self, topic: SubscriptionTopic) -> None:
        """No local worker wants ``topic`` any more."""
        if self._subs.remove(topic):
            self._link.note_state()
            self._schedule_subscribe()

    def is_subscribed(self, topic: SubscriptionTopic) -> bool:
        """Redis has confirmed ``topic`` on the live subscriber: other hosts' frames arrive."""
        return self._link.sub is not None and self._subs.is_confirmed(topic)

    @property
    def subscriptions_settled(self) -> bool:
        """True when connected and Redis has confirmed every current interest."""
        return self._link.sub is not None and self._subs.settled

    def _schedule_subscribe(self) -> None:
        # Changes made in one loop turn go out as one write.
        if (
            not self._subscribe_scheduled
            and self._link.sub is not None
            and self._link.loop is not None
        ):
            self._subscribe_scheduled = True
            self._link.loop.call_soon(self._send_subscriptions)

    def _send_subscriptions(self) -> None:
        self._subscribe_scheduled = False
        if self._link.sub is not None:
            data = self._subs.commands()
            if data:
                self._link.sub.write(data)

    # -- lifecycle ------------------------------------------------------------------

    def stop_timers(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()

    def pub_ready(self, outage: bool) -> None:
        if outage and self._link.queue.pending_count and self._resume_grace > 0:
            self._hold(self._resume_grace)

    def final_commands(self) -> None:
        """Nothing to save: pub/sub keeps no position."""

    def sub_gone(self, conn: RespConnection) -> None:
        """Nothing to undo: the next sub resubscribes everything (``sub_ready``)."""

    def sub_ready(self, conn: RespConnection) -> None:
        conn.set_consumer(self._consume_sub)
        self._link.sub = conn
        self._subs.reset()
        self._link.note_state()
        self._send_subscriptions()

    # -- heartbeat, liveness -----------------------------------------------------------

    def beat(self, now: float, *, judge: bool) -> None:
        """One heartbeat: check both connections, publish, renew presence when due."""
        sub = self._link.sub
        if sub is not None:
            if judge and now - sub.last_rx > HEARTBEAT_TIMEOUT:
                self._link.hb_misses += 1
                self._link.note_silence("sub", "no heartbeat came back", HEARTBEAT_TIMEOUT)
                sub.abort("no heartbeat came back")
            elif self._link.pub is None:
                sub.write(encode_command("PING"))
        if self._link.pub is None or self._link.pub_stalled(now, judge=judge):
            return
        self._hb_seq += 1
        value = b"%b:%d:%.6f:%d" % (self._token, self._hb_seq, now, self._link.rtt.generation)
        self._link.command(encode_command("PUBLISH", self._hb_channel, value))
        self._link.presence_due(now)

    def _heartbeat_back(self, value: bytes) -> None:
        token, _, rest = value.partition(b":")
        if token != self._token:
            self._link.foreign_bridge("publishes heartbeats")
            return
        with contextlib.suppress(ValueError):
            _, sent, generation = rest.split(b":")
            if self._link.loop is not None:
                self._link.rtt.measured(float(sent), int(generation), self._link.loop.time())

    async def history(
        self, match: Callable[[str], bool], count: int | None, since_ms: int | None
    ) -> list[bytes]:
        """Redis pub/sub keeps nothing: always raises :class:`.BridgeError`."""
        raise BridgeError("Redis pub/sub keeps nothing: history needs stream mode (mode = stream)")

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters and state, JSON-able. ``state``: connected, connecting,
        unreachable, timeout, auth_failed, tls_failed, not_redis, loading,
        redis_error, config_error, closed."""
        status = self._link.status()
        status["congestions"] = self.congestions
        status.update(
            subscribe_errors=self._sub_errors,
            subscriptions=self._subs.count,
            subscriptions_settled=self._link.sub is not None and self._subs.settled,
        )
        return status
