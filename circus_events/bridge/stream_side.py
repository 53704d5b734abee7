"""The Redis side of the bridge, stream mode: relay frames through Redis Streams.

Theory of operation
-------------------
Same two connections as pub/sub mode (``circus-events:<host>:pub`` and
``...:sub``), the same outbound queue, presence record and reconnect policy
(:mod:`.side_base`); what differs:

* **pub** carries every ``XADD <stream> MAXLEN ~ <retention> * <channel>
  <value>``, pipelined exactly like ``PUBLISH`` (encoded in place, one write
  per loop turn, replies counted). The value is the pub/sub value (version,
  node id, header, payload); the entry's one field is the local channel.
  Cursor saves, the data-epoch check, presence and :meth:`StreamSide.history`
  go over it too.
* **sub** loops on ``XREAD COUNT 1000 BLOCK 1000 STREAMS <every shard>
  <cursors>``: one command in flight; each reply is filtered (own node id,
  ``ignore_hosts``, malformed, and channels no local worker wants: skipped,
  the cursor still advances), the next ``XREAD`` is sent, then the frames go
  to ``deliver``. Nothing to subscribe: ``subscriptions_settled`` is
  ``connected``.

Redis names (``<base>`` is ``<redis_prefix>:<namespace>:``): streams
``<base>@stream:<n>`` for ``n`` in ``0..stream_shards-1`` (a channel's shard is
``crc32(channel) % stream_shards``, so one channel keeps its order);
``<base>@epoch`` (a random value set with ``SET NX``: it changes only when
Redis lost its data); ``<base>@cursor:<node id hex>`` (this host's saved
position, below).

Where the cursor lives
    In Redis, in the hash ``<base>@cursor:<node id>``: fields ``epoch``,
    ``s<n>`` (last delivered id of shard ``n``), ``interest`` (what local
    workers wanted) and ``owner`` (a token per run: finding another one
    there means a second bridge runs under this host name; counted in
    ``foreign_heartbeats`` and logged, as in pub/sub mode). The node id
    derives from the host name, so a bridge restarted by circus (which may
    get a fresh socket directory) or on a rebuilt machine with the same name
    finds it again; beside the sockets it would be lost with them. It is
    saved every :data:`CURSOR_SAVE_INTERVAL` when it moved, and on close; it
    expires after :data:`CURSOR_TTL` without saves. A SIGKILLed bridge
    re-delivers at most that interval's entries; the receivers drop them as
    duplicates by sequence number. A bridge without a saved cursor reads
    only new entries: ``$`` as of the moment it started, not of its first
    connection (the start time in Redis' clock, from ``TIME``), so a worker
    that subscribed while Redis was still being reached loses nothing.
    Limit: Redis that loses its data also loses the cursors, so a bridge
    restarted *during* such an outage starts afresh.

Resuming after a restart
    Workers keep running while their bridge restarts and resubscribe when
    their sockets reconnect (ZeroMQ retries at most every second). Entries
    read before a worker is back would be skipped for it, so a bridge that
    found a saved cursor waits until every subscription saved with it is
    back, at most ``resume_grace`` (:data:`RESUME_WAIT`), before its first
    ``XREAD``. Publishing is not held.

Redis that lost data
    Checked whenever sub (re)connects, before reading: the epoch (``SET NX``
    then ``GET``) differs from the one the cursor was read under (Redis
    restarted empty, was flushed, or replaced): every cursor goes back to
    ``0-0`` (all that Redis holds now is new to us); a shard whose
    ``last-generated-id`` is below our cursor (a failover lost the tail):
    that cursor goes back to it. Either way ``data_lost`` is counted, the
    problem is logged and shown in ``last_data_loss`` (and ``last_error``
    until the next reconnection); the workers' sequence
    tracking reports the per-origin gaps when new messages arrive. Every
    :data:`HEARTBEAT_INTERVAL` pub also reads the epoch; a change drops sub so
    that its reconnection applies the check (a ``FLUSHALL`` without restart).

Falling behind: a bridge more than ``retention`` entries behind (or away
that long) finds entries trimmed before it read them. When a shard's first
entry is past our cursor and Redis (7+: ``entries-added`` above
``length``) has trimmed its head, at sub's setup or in pub's check every
:data:`OVERRUN_CHECK_INTERVAL`, ``overruns`` is counted and logged, once per
episode. It is a warning, not an exact count: a brief lag caught up between
two checks goes unseen, and a cursor on the very last trimmed entry counts
although nothing was missed. The exact record is the sequence numbers: the
bridge's and the workers' gap counters.

Liveness: an ``XREAD`` without an answer for :data:`READ_TIMEOUT` (it blocks
1 s at most) drops sub, counted in ``heartbeat_misses``; the reconnection
resumes from the cursor. pub is checked as in pub/sub mode (``stalls``);
``heartbeat_rtt_ms`` is the round trip of the epoch check. After an outage
the backlog is written at once: entries persist, so unlike pub/sub no hold.

Every bridge of a namespace must run in stream mode with the same
``stream_shards`` (a channel's stream is chosen by the publisher); changing
it re-maps channels, and shards without a saved cursor start at the
bridge's start.

Errors never leave :meth:`StreamSide.run`; :meth:`StreamSide.history` raises
:class:`.BridgeError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
import zlib
from collections.abc import Callable
from typing import Any, Final

import hiredis

from .._config import BridgeConfig
from .._exceptions import BridgeError
from ..protocol.envelope import REDIS_VERSION, VERSION
from ..protocol.topics import INBOX_PREFIX, SubscriptionTopic
from .resp import CONNECT_TIMEOUT, RespConnection, encode_command
from .side_base import MIN_VALUE, STAMP_OFFSET, RedisSideBase, origin_host

__all__ = [
    "CURSOR_SAVE_INTERVAL",
    "CURSOR_TTL",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "HISTORY_TIMEOUT",
    "OVERRUN_CHECK_INTERVAL",
    "READ_TIMEOUT",
    "RESUME_WAIT",
    "XREAD_BLOCK_MS",
    "XREAD_COUNT",
    "StreamNames",
    "StreamSide",
    "shard_of",
]

log = logging.getLogger("circus_events.redis")

#: Entries per stream per XREAD.
XREAD_COUNT: Final = 1000
#: XREAD blocks at most this long: an idle connection still answers every second.
XREAD_BLOCK_MS: Final = 1000
#: An XREAD without an answer for this long: the connection is dead.
READ_TIMEOUT: Final = XREAD_BLOCK_MS / 1000 + 3.0
#: The saved cursor is at most this old (seconds) when the bridge dies.
CURSOR_SAVE_INTERVAL: Final = 0.2
#: A saved cursor not renewed for this long is forgotten (a host gone for good).
CURSOR_TTL: Final = 7 * 24 * 3600
#: Epoch check, liveness judgement and presence every this many seconds.
HEARTBEAT_INTERVAL: Final = 1.0
#: pub: the oldest command without a reply for this long: the connection is dead.
HEARTBEAT_TIMEOUT: Final = 3.0
#: A restarted bridge waits at most this long for its workers' subscriptions.
RESUME_WAIT: Final = 3.0
#: How often pub checks that no shard was trimmed past our cursor.
OVERRUN_CHECK_INTERVAL: Final = 2.0
#: history() gives up (BridgeError) after this long.
HISTORY_TIMEOUT: Final = 10.0
#: Entries per XREVRANGE page in history().
HISTORY_PAGE: Final = 1000

_ZERO: Final = b"0-0"
_INBOX: Final = INBOX_PREFIX.encode("utf-8")
_WANTED_CACHE_MAX: Final = 10_000
_StreamId = tuple[int, int]


def shard_of(channel: bytes, shards: int) -> int:
    """The shard (stream number) of a local channel: stable on every host."""
    return zlib.crc32(channel) % shards if shards > 1 else 0


def _parse_id(raw: bytes) -> _StreamId:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or b"0")


def _format_id(stream_id: _StreamId) -> bytes:
    return b"%d-%d" % stream_id


def _before(stream_id: _StreamId) -> _StreamId | None:
    """The id just below ``stream_id`` (None below 0-0): XREVRANGE's exclusive end."""
    ms, seq = stream_id
    if seq:
        return ms, seq - 1
    return (ms - 1, 2**64 - 1) if ms else None


class StreamNames:
    """The Redis keys of stream mode for one bridge."""

    __slots__ = ("cursor", "epoch", "streams")

    def __init__(self, config: BridgeConfig) -> None:
        base = f"{config.redis_prefix}:{config.namespace}:".encode()
        #: One stream per shard.
        self.streams = [base + b"@stream:%d" % n for n in range(config.stream_shards)]
        #: Changes only when Redis lost its data.
        self.epoch = base + b"@epoch"
        #: This host's saved position.
        self.cursor = base + b"@cursor:" + config.node_id.hex().encode()


class StreamSide(RedisSideBase):
    """Both Redis connections of one bridge in stream mode.

    Same contract as :class:`.redis_side.RedisSide` (``publish``,
    ``add_interest``/``remove_interest``, ``run``, ``close``, ``status``,
    ``connected``, ``subscriptions_settled``, ``is_subscribed``), plus
    :meth:`history`. Between hosts delivery is at least once within the
    retention (receivers drop replays by sequence number); ``resume_grace``
    is here the longest wait for the saved subscriptions after a restart.
    """

    _tick_interval = CURSOR_SAVE_INTERVAL
    _reply_type = bytes
    _command_name = "XADD"

    def __init__(
        self,
        config: BridgeConfig,
        *,
        deliver: Callable[[list[bytes]], None],
        status_provider: Callable[[], dict[str, Any]] | None = None,
        logger: logging.Logger | None = None,
        resume_grace: float = RESUME_WAIT,
    ) -> None:
        super().__init__(
            config, deliver=deliver, status_provider=status_provider, logger=logger or log
        )
        self._resume_wait = resume_grace
        names = StreamNames(config)
        self._keys = names.streams
        self._key_index = {key: n for n, key in enumerate(self._keys)}
        self._epoch_key = names.epoch
        self._cursor_key = names.cursor
        self._shards = config.stream_shards
        self._maxlen = b"%d" % config.retention
        args = [b"XREAD", b"COUNT", b"%d" % XREAD_COUNT, b"BLOCK", b"%d" % XREAD_BLOCK_MS]
        args += [b"STREAMS", *self._keys]
        self._xread_head = b"*%d\r\n" % (len(args) + self._shards) + b"".join(
            b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args
        )
        # Position: resolved at the first sub connection (saved cursor, or our start).
        self._cursors: list[bytes] | None = None
        self._epoch: bytes | None = None
        self._record_loaded = False
        #: A bridge without a saved cursor reads what was added after this (wall clock).
        self._born = time.time()
        self._data_loss_note: str | None = None
        self._loaded_cursors: list[bytes | None] | None = None
        #: Saved subscriptions still awaited before the first read after a restart.
        self._awaited: frozenset[SubscriptionTopic] | None = None
        self._resuming = False
        self._cursor_dirty = False
        self._interest_dirty = False
        self._setup_task: asyncio.Task[None] | None = None
        self._reading = False
        self._read_sent = 0.0
        self._next_beat = 0.0
        # Local interest.
        self._interest: set[SubscriptionTopic] = set()
        self._exact: set[bytes] = set()
        self._prefixes: set[bytes] = set()
        self._wanted: dict[bytes, bool] = {}
        # Counters (see status()).
        self._skipped = 0
        self._data_lost = 0
        self._overruns = 0
        self._overrun_active = [False] * self._shards
        self._next_overrun_check = 0.0
        self._read_errors = 0
        #: Written with every cursor save; another value there: a second bridge
        #: runs under this host name (they would drop each other's messages).
        self._token = secrets.token_hex(6).encode()
        self._owner_saved = False
        self._foreign = 0

    # -- the hot paths -------------------------------------------------------------

    def _publish_head(self, topic: bytes) -> bytes:
        key = self._keys[shard_of(topic, self._shards)]
        maxlen = self._maxlen
        return (
            b"*8\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%b\r\n"
            b"$1\r\n*\r\n$%d\r\n%b\r\n$" % (len(key), key, len(maxlen), maxlen, len(topic), topic)
        )

    def _send_read(self) -> None:
        sub = self._sub
        cursors = self._cursors
        if sub is None or cursors is None or self._loop is None:
            return
        sub.write(b"".join((self._xread_head, *(b"$%d\r\n%b\r\n" % (len(c), c) for c in cursors))))
        self._reading = True
        self._read_sent = self._loop.time()

    def _consume_read(self, reader: Any) -> None:
        """An XREAD reply: filter, advance the cursors, ask again, then deliver."""
        while True:
            reply = reader.gets()
            if reply is False:
                return
            self._reading = False
            if reply is None:  # BLOCK timed out: nothing new
                self._send_read()
                continue
            if reply.__class__ is not list:
                self._read_error(reply)
                return
            frames = self._filter(reply)
            self._send_read()
            if frames:
                self._hand_over(frames)

    def _filter(self, reply: list[Any]) -> list[bytes]:
        frames: list[bytes] = []
        append = frames.append
        cursors = self._cursors
        assert cursors is not None
        stamp = self._stamp
        ignore = self._ignore
        wanted = self._wanted
        dropped_own = rejected = ignored = skipped = 0
        for key, entries in reply:
            shard = self._key_index.get(key)
            if shard is None or not entries:
                continue
            for entry in entries:
                fields = entry[1]
                if fields.__class__ is not list or len(fields) != 2:
                    rejected += 1
                    continue
                channel, value = fields
                if value.startswith(stamp):
                    dropped_own += 1
                    continue
                if (
                    len(value) < MIN_VALUE
                    or value[0] != REDIS_VERSION
                    or value[STAMP_OFFSET] != VERSION
                ):
                    rejected += 1
                    continue
                if ignore is not None and origin_host(value) in ignore:
                    ignored += 1
                    continue
                want = wanted.get(channel)
                if want is None:
                    want = self._wants(channel)
                if not want:
                    skipped += 1
                    continue
                # Same bytes as frame_from_redis(channel, value)[1], without the tuple.
                append(b"".join((channel, b"\0", value[STAMP_OFFSET:])))
            cursors[shard] = entries[-1][0]
        self._cursor_dirty = True
        self._dropped_own += dropped_own
        self._rejected += rejected
        self._ignored += ignored
        self._skipped += skipped
        return frames

    def _wants(self, channel: bytes) -> bool:
        want = channel in self._exact or any(channel.startswith(p) for p in self._prefixes)
        if len(self._wanted) >= _WANTED_CACHE_MAX:
            self._wanted.clear()
        self._wanted[channel] = want
        return want

    def _read_error(self, reply: Any) -> None:
        self._read_errors += 1
        self._last_error = f"Redis refused XREAD: {reply}"
        if self._throttle.allow("read-error"):
            self._log.error("circus-events: %s; reconnecting", self._last_error)
        if self._sub is not None:
            self._sub.abort(self._last_error)  # the keeper backs off before the next try

    # -- interest -------------------------------------------------------------------

    def add_interest(self, topic: SubscriptionTopic) -> None:
        """A local worker subscribed to ``topic`` (exact channel or prefix)."""
        if topic in self._interest:
            return
        self._interest.add(topic)
        name = topic.name.encode("utf-8")
        (self._exact if topic.exact else self._prefixes).add(name)
        self._wanted.clear()
        self._interest_dirty = True

    def remove_interest(self, topic: SubscriptionTopic) -> None:
        """No local worker wants ``topic`` any more."""
        if topic not in self._interest:
            return
        self._interest.discard(topic)
        name = topic.name.encode("utf-8")
        (self._exact if topic.exact else self._prefixes).discard(name)
        self._wanted.clear()
        self._interest_dirty = True

    def is_subscribed(self, topic: SubscriptionTopic) -> bool:
        """Other hosts' frames for ``topic`` are being read (connected and wanted)."""
        return self._sub is not None and topic in self._interest

    @property
    def subscriptions_settled(self) -> bool:
        """Streams need no per-channel subscription: True while reading."""
        return self.connected

    # -- the sub connection: position, data loss, reading ------------------------------

    def _setup_sub(self, conn: RespConnection) -> None:
        assert self._loop is not None
        self._setup_task = self._loop.create_task(
            self._start_reading(conn), name="circus-events-stream-setup"
        )

    def _sub_gone(self, conn: RespConnection) -> None:
        self._reading = False
        task = self._setup_task
        if task is not None and not task.done():
            task.cancel()
        self._setup_task = None

    def _stop_timers(self) -> None:
        if self._setup_task is not None:
            self._setup_task.cancel()

    async def _start_reading(self, conn: RespConnection) -> None:
        """Check the epoch and the streams, settle the cursors, wait for workers, read."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                load = not self._record_loaded
                requests = [
                    conn.request("SET", self._epoch_key, secrets.token_hex(8), "NX"),
                    conn.request("GET", self._epoch_key),
                    conn.request("TIME"),
                    *(conn.request("XINFO", "STREAM", key) for key in self._keys),
                ]
                if load:
                    requests.append(conn.request("HGETALL", self._cursor_key))
                replies = await asyncio.gather(*requests, return_exceptions=True)
                answered = time.time()
            for reply in replies:
                if isinstance(reply, ConnectionError):
                    return  # the keeper reconnects
                if isinstance(reply, BaseException) and not isinstance(reply, hiredis.ReplyError):
                    raise reply
            epoch, now = replies[1], replies[2]
            saved = replies[-1] if load else None
            for reply in (epoch, now, saved):
                if isinstance(reply, hiredis.ReplyError):
                    raise _SetupError(f"Redis refused the stream setup: {reply}")
            infos = [self._stream_info(r) for r in replies[3 : 3 + self._shards]]
            if load:
                self._load_record(saved)
            self._reconcile(epoch, [info[0] for info in infos], self._start_id(now, answered))
            for n, info in enumerate(infos):
                self._check_overrun(n, info[1])
            awaited = self._awaited
            if awaited:
                await self._await_workers(awaited)
            self._awaited = None
            if not conn.is_open or self._closing:
                return
            conn.set_consumer(self._consume_read)
            self._sub = conn
            self._send_read()
        except TimeoutError:
            self._note_silence("sub", "Redis did not answer the stream setup")
            conn.abort("Redis did not answer the stream setup")
        except ConnectionError:
            pass  # the keeper reconnects
        except _SetupError as exc:
            self._read_errors += 1
            self._last_error = str(exc)
            if self._throttle.allow("setup-error"):
                self._log.error("circus-events: %s; retrying", exc)
            conn.abort(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._throttle.allow("bug-setup"):
                self._log.exception("circus-events: unexpected error starting to read streams")
            conn.abort("unexpected error starting to read streams")

    @staticmethod
    def _stream_info(reply: Any) -> tuple[_StreamId | None, _StreamId | None]:
        """From an XINFO STREAM reply: ``last-generated-id``, and the first id kept
        if entries were trimmed from the head (else None). (None, None): no stream.

        The second needs Redis 7 (``entries-added``, ``recorded-first-entry-id``).
        """
        if isinstance(reply, hiredis.ReplyError):
            if "no such key" in str(reply).lower():
                return None, None
            raise _SetupError(f"Redis refused XINFO STREAM: {reply}")
        if isinstance(reply, list):
            info = dict(zip(reply[::2], reply[1::2], strict=False))
            last = info.get(b"last-generated-id")
            if isinstance(last, bytes):
                first = info.get(b"recorded-first-entry-id")
                added = info.get(b"entries-added")
                length = info.get(b"length")
                if (
                    isinstance(first, bytes)
                    and isinstance(added, int)
                    and isinstance(length, int)
                    and added > length
                ):
                    return _parse_id(last), _parse_id(first)
                return _parse_id(last), None
        raise _SetupError(f"unexpected XINFO STREAM reply: {reply!r:.80}")

    def _check_overrun(self, shard: int, first: _StreamId | None) -> None:
        """Entries after our cursor were trimmed before we read them: the stream's
        first entry is past our cursor, and entries were removed from its head."""
        cursors = self._cursors
        if cursors is None or first is None:
            return
        if first <= _parse_id(cursors[shard]):
            self._overrun_active[shard] = False
            return
        if self._overrun_active[shard]:
            return  # the same episode
        self._overrun_active[shard] = True
        self._overruns += 1
        self._last_error = (
            f"stream shard {shard} was trimmed past this bridge's position: it fell more than"
            f" retention={self.config.retention} entries behind, or was away that long;"
            " those events are lost here"
        )
        self._log.warning(
            "circus-events: %s (overrun #%d); workers report the gaps",
            self._last_error,
            self._overruns,
        )

    def _load_record(self, reply: Any) -> None:
        """The saved position (HGETALL), once per run."""
        self._record_loaded = True
        if not isinstance(reply, list) or not reply:
            return
        record = dict(zip(reply[::2], reply[1::2], strict=False))
        epoch = record.get(b"epoch")
        if not isinstance(epoch, bytes):
            return
        cursors: list[bytes | None] = []
        for n in range(self._shards):
            raw = record.get(b"s%d" % n)
            try:
                cursors.append(_format_id(_parse_id(raw)) if isinstance(raw, bytes) else None)
            except ValueError:
                cursors.append(None)
        self._epoch = epoch
        self._loaded_cursors = cursors
        if self._resume_wait > 0:
            self._awaited = frozenset(_parse_interest(record.get(b"interest")))
        self._log.info(
            "circus-events: resuming the stream at %s (saved cursor)",
            ", ".join(c.decode() if c else "$" for c in cursors),
        )

    def _start_id(self, now: Any, answered: float) -> _StreamId:
        """The stream id just before this bridge was made, in Redis' clock (from TIME)."""
        try:
            server_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        except (TypeError, ValueError, IndexError):
            raise _SetupError(f"unexpected TIME reply: {now!r:.80}") from None
        # Redis read its clock before we got the answer: this errs on the early side.
        born_ms = server_ms - int((answered - self._born) * 1000) - 1
        return (max(born_ms, 0), 0)

    def _reconcile(
        self, epoch: Any, last_ids: list[_StreamId | None], start: _StreamId = (0, 0)
    ) -> None:
        """Settle the cursors against what Redis holds now; count and log a data loss.

        A shard without a cursor starts at ``start`` (this bridge's birth) or
        at its last id if that is older: only what was added since we started.
        """
        current = epoch if isinstance(epoch, bytes) else None
        loaded, self._loaded_cursors = self._loaded_cursors, None
        cursors: list[bytes | None] = list(self._cursors or loaded or [None] * self._shards)
        lost: str | None = None
        if self._epoch is not None and current is not None and current != self._epoch:
            lost = "Redis lost its data (restarted without persistence, flushed or replaced)"
            cursors = [_ZERO] * self._shards
        else:
            tails: list[int] = []
            for n, (cursor, last) in enumerate(zip(cursors, last_ids, strict=True)):
                if cursor is None:
                    cursors[n] = _format_id(min(last, start)) if last is not None else _ZERO
                elif last is None:
                    if cursor != _ZERO:
                        tails.append(n)
                        cursors[n] = _ZERO
                elif last < _parse_id(cursor):
                    tails.append(n)
                    cursors[n] = _format_id(last)
            if tails:
                lost = (
                    f"Redis lost the newest stream entries (shard {', '.join(map(str, tails))}"
                    " is behind this bridge's cursor: a failover or a restart from an old save)"
                )
        if current is not None:
            self._epoch = current
        self._cursors = [c if c is not None else _ZERO for c in cursors]
        self._cursor_dirty = True
        if lost is not None:
            self._data_lost += 1
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
            self._data_loss_note = f"{when}: {lost}"
            self._last_error = f"{lost}; reading on from what it holds now, some events are lost"
            self._log.warning(
                "circus-events: %s (data loss #%d); workers report the gaps",
                self._last_error,
                self._data_lost,
            )

    async def _await_workers(self, awaited: frozenset[SubscriptionTopic]) -> None:
        """After a restart: wait until the saved subscriptions are back (bounded)."""
        assert self._loop is not None
        self._resuming = True
        try:
            deadline = self._loop.time() + self._resume_wait
            while not awaited <= self._interest and self._loop.time() < deadline:
                await asyncio.sleep(0.01)  # poll: workers resubscribe on their own schedule
        finally:
            self._resuming = False
        back = len(awaited & self._interest)
        if back < len(awaited):
            self._log.info(
                "circus-events: reading the stream with %d of %d earlier subscriptions back",
                back,
                len(awaited),
            )

    # -- the periodic tick: cursor, liveness, epoch, presence ----------------------------

    def _beat(self, now: float, *, judge: bool) -> None:
        if now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_INTERVAL
            self._heartbeat(now, judge=judge)
        # After the owner check: it reads who wrote since our previous save.
        self._save_cursor()

    def _heartbeat(self, now: float, *, judge: bool) -> None:
        """Every HEARTBEAT_INTERVAL: liveness, owner and epoch checks, overruns, presence."""
        sub, pub = self._sub, self._pub
        if sub is not None and self._reading and judge and now - self._read_sent > READ_TIMEOUT:
            self._hb_misses += 1
            self._note_silence("sub", "XREAD got no answer")
            sub.abort("XREAD got no answer")
        if pub is None:
            return
        oldest = self._queue.oldest_sent()
        if judge and oldest is not None and now - max(oldest, pub.last_rx) > HEARTBEAT_TIMEOUT:
            self._stalls += 1
            self._note_silence("pub", "Redis stopped answering")
            pub.abort("Redis stopped answering")
            return
        if self._owner_saved:
            self._pub_command(encode_command("HGET", self._cursor_key, "owner"), self._owner_seen)
        self._pub_command(encode_command("SET", self._epoch_key, secrets.token_hex(8), "NX"))
        self._pub_command(
            encode_command("GET", self._epoch_key), lambda reply: self._epoch_seen(now, reply)
        )
        if now >= self._next_overrun_check and self._cursors is not None:
            self._next_overrun_check = now + OVERRUN_CHECK_INTERVAL
            for n, key in enumerate(self._keys):
                self._pub_command(
                    encode_command("XINFO", "STREAM", key), functools.partial(self._overrun_info, n)
                )
        self._presence_due(now)

    def _overrun_info(self, shard: int, reply: Any) -> None:
        if isinstance(reply, Exception):
            return  # no stream yet, or the connection is gone
        with contextlib.suppress(_SetupError, ValueError):
            self._check_overrun(shard, self._stream_info(reply)[1])

    def _epoch_seen(self, sent: float, reply: Any) -> None:
        if isinstance(reply, Exception) or self._loop is None:
            return
        self._hb_rtt_ms = round((self._loop.time() - sent) * 1000.0, 3)
        sub = self._sub
        changed = isinstance(reply, bytes) and self._epoch is not None and reply != self._epoch
        if changed and sub is not None:
            # The check on reconnection counts and logs it, and resets the cursors.
            sub.abort("Redis lost its data (epoch changed)")

    def _note_silence(self, role: str, what: str) -> None:
        self._last_error = f"Redis {role} connection silent ({what})"
        if self._throttle.allow(f"silent-{role}"):
            self._log.warning("circus-events: %s; reconnecting", self._last_error)

    def _save_cursor(self, *, force: bool = False) -> None:
        """Store the position (and the subscriptions, when they changed) in Redis."""
        cursors = self._cursors
        epoch = self._epoch
        if cursors is None or epoch is None or self._pub is None:
            return
        # While a restarted bridge awaits its workers, the saved subscriptions stand.
        interest = (self._interest_dirty or force) and self._awaited is None
        if not (self._cursor_dirty or interest or force):
            return
        fields: list[bytes | str] = [b"owner", self._token, b"epoch", epoch]
        for n, cursor in enumerate(cursors):
            fields += [b"s%d" % n, cursor]
        if interest:
            fields += [b"interest", _format_interest(self._interest)]
            self._interest_dirty = False
        self._cursor_dirty = False
        self._pub_command(encode_command("HSET", self._cursor_key, *fields), self._cursor_saved)
        self._pub_command(encode_command("PEXPIRE", self._cursor_key, CURSOR_TTL * 1000))

    def _owner_seen(self, reply: Any) -> None:
        if not isinstance(reply, bytes) or reply == self._token:
            return
        self._foreign += 1
        if self._throttle.allow("foreign-owner"):
            self._log.warning(
                "circus-events: another bridge saves its stream position as host %r in namespace"
                " %r; each host needs its own name (CIRCUS_EVENTS_HOST)",
                self.config.host, self.config.namespace,
            )  # fmt: skip

    def _cursor_saved(self, reply: Any) -> None:
        if not isinstance(reply, Exception):
            self._owner_saved = True
        if isinstance(reply, Exception):
            self._cursor_dirty = True  # save again
            self._interest_dirty = True
            if not isinstance(reply, ConnectionError):
                self._last_error = f"Redis refused to save the stream cursor: {reply}"
                if self._throttle.allow("cursor"):
                    self._log.warning("circus-events: %s", self._last_error)

    def _final_commands(self) -> None:
        self._save_cursor(force=True)

    # -- history -------------------------------------------------------------------------

    async def history(
        self, match: Callable[[str], bool], count: int | None, since_ms: int | None
    ) -> list[bytes]:
        """Entries Redis kept, as local frames (``channel NUL header payload``), oldest first.

        ``match(channel)`` selects channels; of those, the newest ``count``
        entries (None: no limit) whose stream id is at least ``since_ms``
        (Unix milliseconds; None: no limit), across every shard, merged by
        stream id. Both None: everything kept (at most ``retention`` per
        shard). Includes this host's own messages; leaves out malformed
        values, ``ignore_hosts`` and direct messages (inbox channels).
        Raises :class:`BridgeError` when Redis cannot be read.
        """
        if count is not None and count <= 0:
            return []
        if self._pub is None or self._loop is None:
            status = self._common_status()
            reason = f": {self._last_error}" if self._last_error else ""
            raise BridgeError(
                f"stream history needs Redis, which is not reachable ({status['state']}{reason})"
            )
        try:
            async with asyncio.timeout(HISTORY_TIMEOUT):
                found = await asyncio.gather(
                    *(self._shard_history(key, match, count, since_ms) for key in self._keys),
                    return_exceptions=True,  # every shard finishes: no reply left unread
                )
            for shard in found:
                if isinstance(shard, BaseException):
                    raise shard
        except TimeoutError:
            raise BridgeError(
                f"stream history: Redis did not answer within {HISTORY_TIMEOUT:g}s"
            ) from None
        except ConnectionError as exc:
            raise BridgeError(f"stream history: the Redis connection was lost ({exc})") from None
        entries = [entry for shard in found if isinstance(shard, list) for entry in shard]
        entries.sort(key=lambda entry: entry[0])
        if count is not None:
            entries = entries[-count:]
        return [frame for _, frame in entries]

    async def _shard_history(
        self, key: bytes, match: Callable[[str], bool], count: int | None, since_ms: int | None
    ) -> list[tuple[_StreamId, bytes]]:
        """Newest first from one stream, page by page, until enough matched."""
        start = b"%d" % since_ms if since_ms is not None else b"-"
        page = HISTORY_PAGE if count is None else min(HISTORY_PAGE, max(count, 100))
        end: bytes = b"+"
        found: list[tuple[_StreamId, bytes]] = []
        scanned = 0
        while True:
            reply = await self._pub_request(
                encode_command("XREVRANGE", key, end, start, "COUNT", page)
            )
            if isinstance(reply, hiredis.ReplyError):
                raise BridgeError(f"stream history: Redis refused XREVRANGE: {reply}")
            if not isinstance(reply, list):
                raise BridgeError(f"stream history: unexpected XREVRANGE reply {reply!r:.80}")
            for raw_id, fields in reply:
                frame = self._history_frame(fields, match)
                if frame is not None:
                    found.append((_parse_id(raw_id), frame))
                    if count is not None and len(found) >= count:
                        return found
            scanned += len(reply)
            # The stream holds about `retention` entries; the bound guards a racing writer.
            if len(reply) < page or scanned >= 2 * self.config.retention + page:
                return found
            below = _before(_parse_id(reply[-1][0]))
            if below is None:
                return found
            end = _format_id(below)

    def _history_frame(self, fields: Any, match: Callable[[str], bool]) -> bytes | None:
        if not isinstance(fields, list) or len(fields) != 2:
            return None
        channel, value = fields
        if (
            len(value) < MIN_VALUE
            or value[0] != REDIS_VERSION
            or value[STAMP_OFFSET] != VERSION
            or channel.startswith(_INBOX)
        ):
            return None
        if self._ignore is not None and origin_host(value) in self._ignore:
            return None
        try:
            name = channel.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not match(name):
            return None
        return b"".join((channel, b"\0", value[STAMP_OFFSET:]))

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters and state, JSON-able. ``state`` as in pub/sub mode; besides:
        ``cursor`` (last delivered id per shard), ``data_lost`` (times Redis
        was found to have lost entries) and ``last_data_loss`` (when, why),
        ``overruns`` (times entries were trimmed before this bridge read them),
        ``foreign_heartbeats`` (as in pub/sub mode, read from the saved
        cursor's owner: another bridge runs under this host name),
        ``skipped`` (entries no local worker
        wanted), ``resuming`` (waiting for workers after a restart)."""
        status = self._common_status()
        cursors = self._cursors
        status.update(
            mode="stream",
            subscriptions=len(self._interest),
            subscriptions_settled=self.connected,
            cursor=[c.decode() for c in cursors] if cursors is not None else None,
            stream_shards=self._shards,
            retention=self.config.retention,
            data_lost=self._data_lost,
            last_data_loss=self._data_loss_note,
            overruns=self._overruns,
            foreign_heartbeats=self._foreign,
            skipped=self._skipped,
            read_errors=self._read_errors,
            resuming=self._resuming,
        )
        return status


class _SetupError(Exception):
    """Redis refused a command of the stream setup."""


def _format_interest(interest: set[SubscriptionTopic]) -> bytes:
    return json.dumps(
        sorted(("=" if t.exact else "^") + t.name for t in interest), separators=(",", ":")
    ).encode()


def _parse_interest(raw: Any) -> list[SubscriptionTopic]:
    if not isinstance(raw, bytes):
        return []
    with contextlib.suppress(ValueError):
        items = json.loads(raw)
        if isinstance(items, list):
            return [
                SubscriptionTopic(item[1:], item[0] == "=")
                for item in items
                if isinstance(item, str) and item[:1] in ("=", "^")
            ]
    return []
