"""The decisions of stream mode, without I/O: where to read, what was lost, what to keep.

Theory of operation
-------------------
:class:`.stream_side.StreamSide` sends the commands and hands the replies
here; everything that *decides* lives in this module and is tested by
feeding it replies (no Redis, no clock, no asyncio):

* **Stream ids** (:func:`parse_id`, :func:`format_id`, :func:`id_before`)
  and the **shard** of a channel (:func:`shard_of`: ``crc32 % shards``, the
  same on every host, so one channel keeps its order).
* **Where a fresh bridge starts** (:func:`start_id`): the stream id just
  before the bridge was made, in Redis' clock (from ``TIME``), so a worker
  that subscribed while Redis was still being reached loses nothing.
* **The saved cursor** (:func:`load_record`, :func:`cursor_fields`): the
  hash ``<base>@cursor:<node id>`` holds ``owner``, ``epoch``, ``s<n>`` per
  shard and ``interest`` (:func:`format_interest`, :func:`parse_interest`).
  A malformed record reads as no record, a malformed shard as no cursor.
* **Reconciling** (:func:`reconcile`) the cursors with what Redis holds at
  every (re)connection: another data epoch means Redis lost everything,
  every cursor goes back to ``0-0``; a shard whose ``last-generated-id``
  (:func:`stream_info`) is below our cursor lost its tail, that cursor goes
  back to it. Either way the result names the loss, for the counters and
  the log. A shard without a cursor starts at the start id (or its last id,
  if older).
* **Overruns** (:class:`OverrunWatch`): a shard whose first kept entry is
  past our cursor, with entries trimmed from its head (Redis 7+), was
  trimmed before we read it; counted once per episode.
* **Local interest** (:class:`Interest`): which channels a local worker
  wants, exact names and prefixes, with a bounded per-channel cache for the
  read loop.

The rules, as the bridge applies them
-------------------------------------
Where the cursor lives
    In Redis, in the hash ``<base>@cursor:<node id>``: fields ``epoch``,
    ``s<n>`` (last delivered id of shard ``n``), ``interest`` (what local
    workers wanted) and ``owner`` (a token per run: finding another one
    there means a second bridge runs under this host name; counted in
    ``foreign_heartbeats`` and logged, as in pub/sub mode). The node id
    derives from the host name, so a bridge restarted by circus (which may
    get a fresh socket directory) or on a rebuilt machine with the same name
    finds it again; beside the sockets it would be lost with them. It is
    saved every :data:`.stream_side.CURSOR_SAVE_INTERVAL` when it moved
    (never while the bridge's rejoin hold keeps frames it has not delivered:
    the cursor may be past them), and on close; it
    expires after :data:`.stream_side.CURSOR_TTL` without saves. A SIGKILLed bridge
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
    back, at most ``resume_grace`` (:data:`.stream_side.RESUME_WAIT`), before its first
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
    :data:`.link.HEARTBEAT_INTERVAL` pub also reads the epoch; a change drops sub so
    that its reconnection applies the check (a ``FLUSHALL`` without restart).

Falling behind: a bridge more than ``retention`` entries behind (or away
that long) finds entries trimmed before it read them. When a shard's first
entry is past our cursor and Redis (7+: ``entries-added`` above
``length``) has trimmed its head, at sub's setup or in pub's check every
:data:`.stream_side.OVERRUN_CHECK_INTERVAL`, ``overruns`` is counted and logged, once per
episode. It is a warning, not an exact count: a brief lag caught up between
two checks goes unseen, and a cursor on the very last trimmed entry counts
although nothing was missed. The exact record is the sequence numbers: the
bridge's and the workers' gap counters.

Errors: a reply that cannot be what Redis sends for the command raises
:class:`StreamReplyError` (the caller drops the connection and retries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import zlib
from typing import Any, Final

from ..protocol.topics import MAX_TOPIC_BYTES, SubscriptionTopic

__all__ = [
    "WANTED_CACHE_MAX",
    "ZERO",
    "Interest",
    "OverrunWatch",
    "Reconciled",
    "SavedCursor",
    "StreamId",
    "StreamReplyError",
    "cursor_fields",
    "format_id",
    "format_interest",
    "id_before",
    "load_record",
    "parse_id",
    "parse_interest",
    "reconcile",
    "shard_of",
    "start_id",
    "stream_info",
]

#: The stream id before every entry.
ZERO: Final = b"0-0"
#: Channels remembered by :meth:`Interest.wants` before the cache starts over
#: (a few hundred KiB at most with typical channel names).
WANTED_CACHE_MAX: Final = 10_000
_MAX_SEQ: Final = 2**64 - 1

#: ``(milliseconds, sequence)``: ordered like Redis orders stream ids.
StreamId = tuple[int, int]


class StreamReplyError(Exception):
    """Redis refused a command of the stream setup, or sent what it cannot send."""


def shard_of(channel: bytes, shards: int) -> int:
    """The shard (stream number) of a local channel: stable on every host."""
    return zlib.crc32(channel) % shards if shards > 1 else 0


def parse_id(raw: bytes) -> StreamId:
    """``b"1700000000000-3"`` (or ``b"1700000000000"``) -> ``(1700000000000, 3)``.

    Raises ValueError for anything else.
    """
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or b"0")


def format_id(stream_id: StreamId) -> bytes:
    return b"%d-%d" % stream_id


def id_before(stream_id: StreamId) -> StreamId | None:
    """The id just below ``stream_id`` (None below 0-0): XREVRANGE's exclusive end."""
    ms, seq = stream_id
    if seq:
        return ms, seq - 1
    return (ms - 1, _MAX_SEQ) if ms else None


def start_id(time_reply: Any, answered: float, born: float) -> StreamId:
    """The stream id just before the bridge was made (wall clock ``born``), in
    Redis' clock: ``time_reply`` is the ``TIME`` reply, read at ``answered``."""
    try:
        server_ms = int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000
    except (TypeError, ValueError, IndexError):
        raise StreamReplyError(f"unexpected TIME reply: {time_reply!r:.80}") from None
    # Redis read its clock before we got the answer: this errs on the early side.
    born_ms = server_ms - int((answered - born) * 1000) - 1
    return (max(born_ms, 0), 0)


def stream_info(reply: Any) -> tuple[StreamId | None, StreamId | None]:
    """From an ``XINFO STREAM`` reply: ``last-generated-id``, and the first id kept
    if entries were trimmed from the head (else None). ``(None, None)``: no stream.

    The second needs Redis 7 (``entries-added``, ``recorded-first-entry-id``).
    An error reply other than "no such key" raises :class:`StreamReplyError`.
    """
    if isinstance(reply, Exception):
        if "no such key" in str(reply).lower():
            return None, None
        raise StreamReplyError(f"Redis refused XINFO STREAM: {reply}")
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
                return parse_id(last), parse_id(first)
            return parse_id(last), None
    raise StreamReplyError(f"unexpected XINFO STREAM reply: {reply!r:.80}")


# -- the saved cursor -------------------------------------------------------------------


def format_interest(interest: set[SubscriptionTopic]) -> bytes:
    """The ``interest`` field: a sorted JSON list of ``=exact`` and ``^prefix``."""
    return json.dumps(
        sorted(("=" if t.exact else "^") + t.name for t in interest), separators=(",", ":")
    ).encode()


def parse_interest(raw: Any) -> list[SubscriptionTopic]:
    """The ``interest`` field back; anything malformed is left out."""
    if not isinstance(raw, bytes):
        return []
    with contextlib.suppress(ValueError, RecursionError):  # from Redis: anything
        items = json.loads(raw)
        if isinstance(items, list):
            return [
                SubscriptionTopic(item[1:], item[0] == "=")
                for item in items
                if isinstance(item, str) and item[:1] in ("=", "^")
            ]
    return []


@dataclasses.dataclass(frozen=True)
class SavedCursor:
    """A saved position: the data epoch it was read under, one cursor per shard
    (None: no valid cursor for that shard), the subscriptions saved with it."""

    epoch: bytes
    cursors: list[bytes | None]
    interest: frozenset[SubscriptionTopic]


def load_record(reply: Any, shards: int) -> SavedCursor | None:
    """The ``HGETALL`` reply of the cursor hash; None if there is no usable record."""
    if not isinstance(reply, list) or not reply:
        return None
    record = dict(zip(reply[::2], reply[1::2], strict=False))
    epoch = record.get(b"epoch")
    if not isinstance(epoch, bytes):
        return None
    cursors: list[bytes | None] = []
    for n in range(shards):
        raw = record.get(b"s%d" % n)
        try:
            cursors.append(format_id(parse_id(raw)) if isinstance(raw, bytes) else None)
        except ValueError:
            cursors.append(None)
    return SavedCursor(epoch, cursors, frozenset(parse_interest(record.get(b"interest"))))


def cursor_fields(
    owner: bytes, epoch: bytes, cursors: list[bytes], interest: set[SubscriptionTopic] | None
) -> list[bytes | str]:
    """The ``HSET`` fields of a save; ``interest`` None leaves the saved one standing."""
    fields: list[bytes | str] = [b"owner", owner, b"epoch", epoch]
    for n, cursor in enumerate(cursors):
        fields += [b"s%d" % n, cursor]
    if interest is not None:
        fields += [b"interest", format_interest(interest)]
    return fields


# -- reconciling -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reconciled:
    """Where to read from now; ``lost`` says what Redis lost (None: nothing)."""

    cursors: list[bytes]
    epoch: bytes | None
    lost: str | None


def reconcile(
    known_epoch: bytes | None,
    epoch_reply: Any,
    cursors: list[bytes | None],
    last_ids: list[StreamId | None],
    start: StreamId = (0, 0),
) -> Reconciled:
    """Settle ``cursors`` (ours, None per shard without one) against what Redis holds.

    ``known_epoch`` is the epoch the cursors were read under, ``epoch_reply``
    the ``GET`` of the epoch key now, ``last_ids`` each shard's
    ``last-generated-id`` (None: no stream). A shard without a cursor starts
    at ``start`` (the bridge's birth) or at its last id if that is older.
    """
    current = epoch_reply if isinstance(epoch_reply, bytes) else None
    settled: list[bytes | None] = list(cursors)
    lost: str | None = None
    if known_epoch is not None and current is not None and current != known_epoch:
        lost = "Redis lost its data (restarted without persistence, flushed or replaced)"
        settled = [ZERO] * len(cursors)
    else:
        tails: list[int] = []
        for n, (cursor, last) in enumerate(zip(cursors, last_ids, strict=True)):
            if cursor is None:
                settled[n] = format_id(min(last, start)) if last is not None else ZERO
            elif last is None:
                if cursor != ZERO:
                    tails.append(n)
                    settled[n] = ZERO
            elif last < parse_id(cursor):
                tails.append(n)
                settled[n] = format_id(last)
        if tails:
            lost = (
                f"Redis lost the newest stream entries (shard {', '.join(map(str, tails))}"
                " is behind this bridge's cursor: a failover or a restart from an old save)"
            )
    return Reconciled(
        [c if c is not None else ZERO for c in settled],
        current if current is not None else known_epoch,
        lost,
    )


class OverrunWatch:
    """Counts shards trimmed past our cursor, once per episode."""

    __slots__ = ("_active", "overruns")

    def __init__(self, shards: int) -> None:
        self._active = [False] * shards
        #: Episodes seen so far.
        self.overruns = 0

    def check(self, shard: int, first: StreamId | None, cursor: bytes) -> bool:
        """``first``: the shard's first kept id if its head was trimmed (else None).
        True when this starts a new overrun episode (count it, say it)."""
        if first is None:
            return False
        if first <= parse_id(cursor):
            self._active[shard] = False
            return False
        if self._active[shard]:
            return False  # the same episode
        self._active[shard] = True
        self.overruns += 1
        return True


# -- local interest --------------------------------------------------------------------------


class Interest:
    """What local workers want: exact channels and prefixes, with a read-loop cache."""

    __slots__ = ("_exact", "_prefixes", "topics", "wanted")

    def __init__(self) -> None:
        self.topics: set[SubscriptionTopic] = set()
        self._exact: set[bytes] = set()
        self._prefixes: set[bytes] = set()
        #: channel -> wanted; the read loop looks here first, then calls :meth:`wants`.
        self.wanted: dict[bytes, bool] = {}

    def add(self, topic: SubscriptionTopic) -> bool:
        """True if ``topic`` is new."""
        if topic in self.topics:
            return False
        self.topics.add(topic)
        (self._exact if topic.exact else self._prefixes).add(topic.name.encode("utf-8"))
        self.wanted.clear()
        return True

    def remove(self, topic: SubscriptionTopic) -> bool:
        """True if ``topic`` was there."""
        if topic not in self.topics:
            return False
        self.topics.discard(topic)
        (self._exact if topic.exact else self._prefixes).discard(topic.name.encode("utf-8"))
        self.wanted.clear()
        return True

    def wants(self, channel: bytes) -> bool:
        """Whether some local worker wants ``channel``; cached, unless it is
        longer than any bus name (a Redis writer chooses it: never a cache key)."""
        if len(channel) > MAX_TOPIC_BYTES:
            return False
        want = channel in self._exact or any(channel.startswith(p) for p in self._prefixes)
        if len(self.wanted) >= WANTED_CACHE_MAX:
            self.wanted.clear()
        self.wanted[channel] = want
        return want
