"""The Redis side of the bridge, stream mode: relay frames through Redis Streams.

Theory of operation
-------------------
Same two connections as pub/sub mode (``circus-events:<host>:pub`` and
``...:sub``), the same outbound queue, presence record and reconnect policy
(:mod:`.link`); what differs:

* **pub** carries every ``XADD <stream> MAXLEN ~ <retention> * <channel>
  <value>``, pipelined exactly like ``PUBLISH`` (encoded in place, one write
  per loop turn, replies counted). The value is the pub/sub value (version,
  node id, header, payload); the entry's one field is the local channel.
  Cursor saves, the data-epoch check, presence and :meth:`StreamSide.history`
  go over it too.
* **sub** loops on ``XREAD COUNT <n> BLOCK 1000 STREAMS <every shard>
  <cursors>``: one command in flight; each reply is filtered (own node id,
  ``ignore_hosts``, malformed, and channels no local worker wants: skipped,
  the cursor still advances), the next ``XREAD`` is sent, then the frames go
  to ``deliver``. Nothing to subscribe: ``subscriptions_settled`` is
  ``connected``. ``<n>`` is 1,000, fewer where that many of the largest
  entries would make a reply past 64 MiB (:func:`.stream_queries.xread_count`).

Redis names (``<base>`` is ``<redis_prefix>:<namespace>:``): streams
``<base>@stream:<n>`` for ``n`` in ``0..stream_shards-1`` (a channel's shard is
``crc32(channel) % stream_shards``, so one channel keeps its order);
``<base>@epoch`` (a random value set with ``SET NX``: it changes only when
Redis lost its data); ``<base>@cursor:<node id hex>`` (this host's saved
position, below).

The decisions (where the cursor lives and when it is saved, resuming after
a restart, Redis that lost data, falling behind) are described and made in
:mod:`.stream_cursor`; the setup queries and history in :mod:`.stream_queries`.

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
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final, Unpack

from .._config import BridgeConfig
from .._exceptions import BridgeError
from ..protocol.topics import SubscriptionTopic
from .catchup import LocalHold
from .link import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    LinkKind,
    RedisLink,
    SideWiring,
)
from .resp import CONNECT_TIMEOUT, RespConnection, encode_command
from .side import LinkedSide
from .stream_cursor import (
    Interest,
    OverrunWatch,
    StreamId,
    StreamReplyError,
    cursor_fields,
    load_record,
    reconcile,
    shard_of,
    start_id,
    stream_info,
)
from .stream_queries import (
    HISTORY_TIMEOUT,
    XREAD_COUNT,
    StreamNames,
    merge_newest,
    query_setup,
    read_history,
    xread_count,
)
from .stream_reply import frames_from_xread
from .stream_screen import ReadCommand

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

#: XREAD blocks at most this long: an idle connection still answers every second.
XREAD_BLOCK_MS: Final = 1000
#: An XREAD without an answer for this long: the connection is dead.
READ_TIMEOUT: Final = XREAD_BLOCK_MS / 1000 + 3.0
#: The saved cursor is at most this old (seconds) when the bridge dies.
CURSOR_SAVE_INTERVAL: Final = 0.2
#: A saved cursor not renewed for this long is forgotten (a host gone for good).
CURSOR_TTL: Final = 7 * 24 * 3600
#: A restarted bridge waits at most this long for its workers' subscriptions.
RESUME_WAIT: Final = 3.0
#: How often pub checks that no shard was trimmed past our cursor.
OVERRUN_CHECK_INTERVAL: Final = 2.0

_KIND: Final = LinkKind(CURSOR_SAVE_INTERVAL, bytes, "XADD")


class StreamSide(LinkedSide):
    """Both Redis connections of one bridge in stream mode.

    Same contract as :class:`.redis_side.RedisSide` (``publish``,
    ``add_interest``/``remove_interest``, ``run``, ``close``, ``status``,
    ``connected``, ``subscriptions_settled``, ``is_subscribed``), plus
    :meth:`history`. Between hosts delivery is at least once within the
    retention (receivers drop replays by sequence number); ``resume_grace``
    is here the longest wait for the saved subscriptions after a restart.
    The decisions (cursors, data loss, overruns, interest) are
    :mod:`.stream_cursor`'s; this class sends the commands.
    """

    def __init__(self, config: BridgeConfig, **wiring: Unpack[SideWiring]) -> None:
        super().__init__(RedisLink(config, self, _KIND, **wiring))
        self._resume_wait = wiring.get("resume_grace", RESUME_WAIT)
        self._delivery_held = wiring.get("delivery_held") or _never
        self._names = names = StreamNames(config)
        self._keys = names.streams
        self._key_index = {key: n for n, key in enumerate(self._keys)}
        self._epoch_key = names.epoch
        self._cursor_key = names.cursor
        self._shards = config.stream_shards
        self._maxlen = b"%d" % config.retention
        count = xread_count(config.max_message_bytes, config.stream_shards)
        self._reads = ReadCommand(self._keys, count, XREAD_BLOCK_MS, config.max_message_bytes)
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
        #: Set whenever local interest grows (the resume wait watches it).
        self._interest_grew = asyncio.Event()
        self._resuming = False
        self._cursor_dirty = False
        self._interest_dirty = False
        self._setup_task: asyncio.Task[None] | None = None
        self._reading = False
        self._read_sent = 0.0
        self._next_beat = 0.0
        self._interest = Interest()
        #: A restarted bridge gives its host what it missed (see .catchup).
        self.local_hold: LocalHold = LocalHold(self._link.hand_over, time.monotonic())
        # Counters (see status()).
        self._skipped = 0
        self._data_lost = 0
        self._overrun = OverrunWatch(self._shards)
        self._next_overrun_check = 0.0
        self._read_errors = 0
        #: Written with every cursor save; another value there: a second bridge
        #: runs under this host name (they would drop each other's messages).
        self._token = secrets.token_hex(6).encode()
        self._owner_saved = False

    # -- the hot paths -------------------------------------------------------------

    def publish_head(self, topic: bytes) -> bytes:
        key = self._keys[shard_of(topic, self._shards)]
        maxlen = self._maxlen
        return (
            b"*8\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%b\r\n"
            b"$1\r\n*\r\n$%d\r\n%b\r\n$" % (len(key), key, len(maxlen), maxlen, len(topic), topic)
        )

    def _send_read(self) -> None:
        sub = self._link.sub
        cursors = self._cursors
        if sub is None or cursors is None or self._link.loop is None:
            return
        sub.write(self._reads.command(cursors))
        self._reading = True
        self._read_sent = self._link.loop.time()

    def _consume_read(self, reader: Any) -> None:
        """An XREAD reply: filter, advance the cursors, ask again, then deliver."""
        while True:
            reply = reader.gets()
            if reply is False:
                if self._reads.oversized(reader):  # not a bridge's: step over it (.stream_screen)
                    self._drop_sub("an XREAD reply holds a value past max_message_bytes")
                return
            self._reading = False
            if reply is None:  # BLOCK timed out: nothing new
                self._send_read()
                continue
            if reply.__class__ is not list:
                self._read_error(reply)
                return
            hold = self.local_hold
            catching_up = hold.active and hold.boundary is not None
            frames = self._catch_up(reply) if catching_up else self._filter(reply)
            self._send_read()
            if frames:
                self._link.hand_over(frames)
            if catching_up and hold.caught_up(self._cursors or []):
                hold.release("caught up with the stream")

    def _filter(self, reply: list[Any]) -> list[bytes]:
        frames, skipped = frames_from_xread(
            reply, key_index=self._key_index, cursors=self._cursors or [],
            check=self._link.check, interest=self._interest,
        )  # fmt: skip
        self._cursor_dirty = True
        self._skipped += skipped
        return frames

    def _catch_up(self, reply: list[Any]) -> list[bytes]:
        stamp, hold = self._link.stamp, self.local_hold

        def replay_own(shard: int, entry_id: bytes, value: bytes) -> bool:
            return value.startswith(stamp) and hold.replays(shard, entry_id)

        frames, skipped = frames_from_xread(
            reply, key_index=self._key_index, cursors=self._cursors or [],
            check=self._link.check, interest=self._interest, replay_own=replay_own,
        )  # fmt: skip
        self._cursor_dirty = True
        self._skipped += skipped
        return frames

    def _read_error(self, reply: Any) -> None:
        self._read_errors += 1
        self._reads.refused()  # the screen refused: the next read goes whole (.stream_screen)
        self._drop_sub(f"Redis refused XREAD: {reply}")

    def _drop_sub(self, why: str) -> None:
        self._link.last_error = why
        if self._link.throttle.allow("read-error"):
            self._link.log.error("circus-events: %s; reconnecting", why)
        if self._link.sub is not None:
            self._link.sub.abort(why)  # the keeper backs off before the next try

    # -- interest -------------------------------------------------------------------

    def add_interest(self, topic: SubscriptionTopic) -> None:
        """A local worker subscribed to ``topic`` (exact channel or prefix)."""
        if self._interest.add(topic):
            self._interest_dirty = True
            self._interest_grew.set()

    def remove_interest(self, topic: SubscriptionTopic) -> None:
        """No local worker wants ``topic`` any more."""
        if self._interest.remove(topic):
            self._interest_dirty = True

    def is_subscribed(self, topic: SubscriptionTopic) -> bool:
        """Other hosts' frames for ``topic`` are being read (connected and wanted)."""
        return self._link.sub is not None and topic in self._interest.topics

    @property
    def subscriptions_settled(self) -> bool:
        """Streams need no per-channel subscription: True while reading."""
        return self.connected

    # -- the sub connection: position, data loss, reading ------------------------------

    def sub_ready(self, conn: RespConnection) -> None:
        assert self._link.loop is not None
        self._setup_task = self._link.loop.create_task(
            self._start_reading(conn), name="circus-events-stream-setup"
        )

    def pub_ready(self, outage: bool) -> None:
        """Entries persist: after an outage the backlog is written at once, no hold."""

    def sub_gone(self, conn: RespConnection) -> None:
        self._reading = False
        task = self._setup_task
        if task is not None and not task.done():
            task.cancel()
        self._setup_task = None

    def stop_timers(self) -> None:
        if self._setup_task is not None:
            self._setup_task.cancel()

    async def _start_reading(self, conn: RespConnection) -> None:
        """Check the epoch and the streams, settle the cursors, wait for workers, read."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                found = await query_setup(conn, self._names, not self._record_loaded)
            if found is None:
                return  # the keeper reconnects
            if not self._record_loaded:
                self._load_record(found.saved)
            start = start_id(found.time, found.answered, self._born)
            self._reconcile(found.epoch, [info[0] for info in found.infos], start)
            for n, info in enumerate(found.infos):
                self._check_overrun(n, info[1])
            awaited = self._awaited
            if awaited:
                await self._await_workers(awaited)
            self._awaited = None
            if not conn.is_open or self._link.closing:
                return
            self.local_hold.start([info[0] for info in found.infos], self._cursors or [])
            conn.set_consumer(self._consume_read)
            self._link.sub = conn
            self._link.note_state()
            self._send_read()
        except TimeoutError:
            what = "Redis did not answer the stream setup"
            self._link.note_silence("sub", what, CONNECT_TIMEOUT)
            conn.abort(what)
        except ConnectionError:
            pass  # the keeper reconnects
        except StreamReplyError as exc:
            self._read_errors += 1
            self._link.last_error = str(exc)
            if self._link.throttle.allow("setup-error"):
                self._link.log.error("circus-events: %s; retrying", exc)
            conn.abort(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._link.throttle.allow("bug-setup"):
                self._link.log.exception("circus-events: unexpected error starting to read streams")
            conn.abort("unexpected error starting to read streams")

    def _check_overrun(self, shard: int, first: StreamId | None) -> None:
        """Entries after our cursor were trimmed before we read them: say so, once."""
        cursors = self._cursors
        if cursors is None or not self._overrun.check(shard, first, cursors[shard]):
            return
        self._link.last_error = (
            f"stream shard {shard} was trimmed past this bridge's position: it fell more than"
            f" retention={self.config.retention} entries behind, or was away that long;"
            " those events are lost here"
        )
        self._link.log.warning(
            "circus-events: %s (overrun #%d); workers report the gaps",
            self._link.last_error,
            self._overrun.overruns,
        )

    def _load_record(self, reply: Any) -> None:
        """The saved position (HGETALL), once per run."""
        self._record_loaded = True
        saved = load_record(reply, self._shards)
        if saved is None:
            self.local_hold.release("a fresh bridge: nothing to catch up")
            return
        self._epoch = saved.epoch
        self._loaded_cursors = saved.cursors
        if self._resume_wait > 0:
            self._awaited = saved.interest
        self._link.log.info(
            "circus-events: resuming the stream at %s (saved cursor)",
            ", ".join(c.decode() if c else "$" for c in saved.cursors),
        )

    def _reconcile(self, epoch: Any, last_ids: list[StreamId | None], start: StreamId) -> None:
        """Settle the cursors against what Redis holds now; count and log a data loss."""
        loaded, self._loaded_cursors = self._loaded_cursors, None
        cursors: list[bytes | None] = list(self._cursors or loaded or [None] * self._shards)
        settled = reconcile(self._epoch, epoch, cursors, last_ids, start)
        self._epoch = settled.epoch
        self._cursors = settled.cursors
        self._cursor_dirty = True
        lost = settled.lost
        if lost is not None:
            self._data_lost += 1
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
            self._data_loss_note = f"{when}: {lost}"
            self._link.last_error = (
                f"{lost}; reading on from what it holds now, some events are lost"
            )
            self._link.log.warning(
                "circus-events: %s (data loss #%d); workers report the gaps",
                self._link.last_error,
                self._data_lost,
            )

    async def _await_workers(self, awaited: frozenset[SubscriptionTopic]) -> None:
        """After a restart: wait until the saved subscriptions are back (bounded)."""
        self._resuming = True
        topics = self._interest.topics
        try:
            async with asyncio.timeout(self._resume_wait):
                while not awaited <= topics:
                    self._interest_grew.clear()
                    await self._interest_grew.wait()  # workers resubscribe on their own schedule
        except TimeoutError:
            pass
        finally:
            self._resuming = False
        back = len(awaited & topics)
        if back < len(awaited):
            self._link.log.info(
                "circus-events: reading the stream with %d of %d earlier subscriptions back",
                back,
                len(awaited),
            )

    # -- the periodic tick: cursor, liveness, epoch, presence ----------------------------

    def beat(self, now: float, *, judge: bool) -> None:
        self.local_hold.check(now, self._link.first_attempt.is_set() and not self.connected)
        if now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_INTERVAL
            self._heartbeat(now, judge=judge)
        # After the owner check: it reads who wrote since our previous save.
        self._save_cursor()

    def _heartbeat(self, now: float, *, judge: bool) -> None:
        """Every HEARTBEAT_INTERVAL: liveness, owner and epoch checks, overruns, presence."""
        sub = self._link.sub
        if sub is not None and self._reading and judge and now - self._read_sent > READ_TIMEOUT:
            self._link.hb_misses += 1
            self._link.note_silence("sub", "XREAD got no answer", READ_TIMEOUT)
            sub.abort("XREAD got no answer")
        if self._link.pub is None or self._link.pub_stalled(now, judge=judge):
            return
        if self._owner_saved:
            self._link.command(encode_command("HGET", self._cursor_key, "owner"), self._owner_seen)
        self._link.command(encode_command("SET", self._epoch_key, secrets.token_hex(8), "NX"))
        generation = self._link.rtt.generation
        self._link.command(
            encode_command("GET", self._epoch_key),
            lambda reply: self._epoch_seen(now, generation, reply),
        )
        if now >= self._next_overrun_check and self._cursors is not None:
            self._next_overrun_check = now + OVERRUN_CHECK_INTERVAL
            for n, key in enumerate(self._keys):
                self._link.command(
                    encode_command("XINFO", "STREAM", key), functools.partial(self._overrun_info, n)
                )
        self._link.presence_due(now)

    def _overrun_info(self, shard: int, reply: Any) -> None:
        if isinstance(reply, Exception):
            return  # no stream yet, or the connection is gone
        with contextlib.suppress(StreamReplyError, ValueError):
            self._check_overrun(shard, stream_info(reply)[1])

    def _epoch_seen(self, sent: float, generation: int, reply: Any) -> None:
        if isinstance(reply, Exception) or self._link.loop is None:
            return
        self._link.rtt.measured(sent, generation, self._link.loop.time())
        sub = self._link.sub
        changed = isinstance(reply, bytes) and self._epoch is not None and reply != self._epoch
        if changed and sub is not None:
            # The check on reconnection counts and logs it, and resets the cursors.
            sub.abort("Redis lost its data (epoch changed)")

    def _save_cursor(self, *, force: bool = False) -> None:
        """Store the position (and the subscriptions, when they changed) in Redis."""
        cursors = self._cursors
        epoch = self._epoch
        if cursors is None or epoch is None or self._link.pub is None:
            return
        if self._delivery_held():
            # Entries read meanwhile wait in the rejoin hold: a cursor saved
            # past them would skip them for good if this bridge died before
            # letting them out. Saved (dirty stays set) once the hold opens.
            return
        # While a restarted bridge awaits its workers, the saved subscriptions stand.
        interest = (self._interest_dirty or force) and self._awaited is None
        if not (self._cursor_dirty or interest or force):
            return
        topics = self._interest.topics if interest else None
        fields = cursor_fields(self._token, epoch, cursors, topics)
        if interest:
            self._interest_dirty = False
        self._cursor_dirty = False
        self._link.command(encode_command("HSET", self._cursor_key, *fields), self._cursor_saved)
        self._link.command(encode_command("PEXPIRE", self._cursor_key, CURSOR_TTL * 1000))

    def _owner_seen(self, reply: Any) -> None:
        if not isinstance(reply, bytes) or reply == self._token:
            return
        self._link.foreign_bridge("saves its stream position")

    def _cursor_saved(self, reply: Any) -> None:
        if not isinstance(reply, Exception):
            self._owner_saved = True
            return
        self._cursor_dirty = True  # save again
        self._interest_dirty = True
        if not isinstance(reply, ConnectionError):
            self._link.last_error = f"Redis refused to save the stream cursor: {reply}"
            if self._link.throttle.allow("cursor"):
                self._link.log.warning("circus-events: %s", self._link.last_error)

    def final_commands(self) -> None:
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
        if self._link.pub is None or self._link.loop is None:
            status = self._link.status()
            reason = f": {self._link.last_error}" if self._link.last_error else ""
            raise BridgeError(
                f"stream history needs Redis, which is not reachable ({status['state']}{reason})"
            )
        shards = [
            read_history(
                self._link.request, key, match, count, since_ms,
                retention=self.config.retention, check=self._link.check,
            )
            for key in self._keys
        ]  # fmt: skip
        try:
            async with asyncio.timeout(HISTORY_TIMEOUT):
                # Every shard finishes: no reply left unread.
                found = await asyncio.gather(*shards, return_exceptions=True)
            for shard in found:
                if isinstance(shard, BaseException):
                    raise shard
        except TimeoutError:
            raise BridgeError(
                f"stream history: Redis did not answer within {HISTORY_TIMEOUT:g}s"
            ) from None
        except ConnectionError as exc:
            raise BridgeError(f"stream history: the Redis connection was lost ({exc})") from None
        return merge_newest([shard for shard in found if isinstance(shard, list)], count)

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters and state, JSON-able. ``state`` as in pub/sub mode; besides:
        ``cursor`` (last delivered id per shard), ``data_lost`` (times Redis
        was found to have lost entries) and ``last_data_loss`` (when, why),
        ``overruns`` (times entries were trimmed before this bridge read them),
        ``foreign_heartbeats`` (as in pub/sub mode, read from the saved
        cursor's owner: another bridge runs under this host name),
        ``skipped`` (entries no local worker wanted), ``oversized_reads`` (reads
        that met an entry too large, stepped over), ``resuming`` (workers awaited)."""
        status = self._link.status()
        cursors = self._cursors
        status.update(
            mode="stream",
            subscriptions=len(self._interest.topics),
            subscriptions_settled=self.connected,
            cursor=[c.decode() for c in cursors] if cursors is not None else None,
            stream_shards=self._shards,
            retention=self.config.retention,
            data_lost=self._data_lost, last_data_loss=self._data_loss_note,
            overruns=self._overrun.overruns, congestions=self.congestions,
            skipped=self._skipped,
            read_errors=self._read_errors,
            oversized_reads=self._reads.screened,
            resuming=self._resuming,
            catching_up=self.local_hold.active, catchup_overflows=self.local_hold.overflows,
        )  # fmt: skip
        return status


def _never() -> bool:
    return False
