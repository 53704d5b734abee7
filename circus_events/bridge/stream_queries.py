"""Stream mode's request/reply queries: the setup check at each sub connection, history.

Not the hot loop (``XADD`` and ``XREAD`` are :mod:`.stream_side`'s): commands
whose replies are awaited one by one.

Setup (:func:`query_setup`): whenever sub (re)connects, before reading, one
pipelined round trip: ``SET <epoch> NX`` then ``GET`` (the data epoch),
``TIME`` (Redis' clock, for where a fresh bridge starts), ``XINFO STREAM``
per shard (last id, trimmed head) and, once per run, ``HGETALL`` of the
saved cursor. The replies are checked here and decided on in
:mod:`.stream_cursor`.

History (:func:`read_history`): a worker that subscribes with ``history=``
gets the entries Redis still holds for its channels
(:meth:`.stream_side.StreamSide.history`). Each shard is read with
``XREVRANGE`` from the newest entry down, :data:`HISTORY_PAGE` entries a
page, until ``count`` entries matched, ``since_ms`` is reached, or about
``retention`` entries were scanned (a bound against a writer that keeps the
stream growing under us); :func:`merge_newest` merges the shards by stream
id. Commands go through ``request`` (the side's ordered pub connection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import hiredis

from .._config import FRAME_SLACK, BridgeConfig
from .._exceptions import BridgeError
from ..protocol.topics import INBOX_PREFIX
from .history import HISTORY_MAX_BYTES
from .resp import RespConnection, encode_command
from .stream_cursor import StreamId, StreamReplyError, format_id, id_before, parse_id, stream_info
from .values import STAMP_OFFSET, ValueCheck

__all__ = [
    "HISTORY_PAGE",
    "HISTORY_TIMEOUT",
    "XREAD_COUNT",
    "XREAD_MAX_BYTES",
    "SetupReplies",
    "StreamNames",
    "merge_newest",
    "query_setup",
    "read_history",
    "xread_count",
]

#: history() gives up (BridgeError) after this long.
HISTORY_TIMEOUT: Final = 10.0
#: Entries per XREVRANGE page in history().
HISTORY_PAGE: Final = 1000

_INBOX: Final = INBOX_PREFIX.encode("utf-8")

#: Entries per stream per XREAD, at most.
XREAD_COUNT: Final = 1000
#: Bytes one XREAD reply may hold at the largest entries bridges write:
#: hiredis holds a whole reply in memory (1,000 entries of 1 MiB is 1 GiB).
XREAD_MAX_BYTES: Final = 64 * 1024 * 1024


def xread_count(max_message_bytes: int, shards: int) -> int:
    """Entries per stream per XREAD: XREAD_COUNT, fewer when that many entries
    of the largest size (a message of ``max_message_bytes`` and its header)
    from every shard would pass XREAD_MAX_BYTES; at least one."""
    entry = max_message_bytes + FRAME_SLACK
    return max(1, min(XREAD_COUNT, XREAD_MAX_BYTES // (entry * shards)))


#: Sends one command on the ordered connection; resolves to its reply.
Request = Callable[[bytes], Awaitable[Any]]


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


@dataclasses.dataclass(frozen=True)
class SetupReplies:
    """What Redis said at a sub connection's setup (see the module docstring)."""

    #: The ``GET`` of the epoch key.
    epoch: Any
    #: The ``TIME`` reply, and the wall clock when it arrived.
    time: Any
    answered: float
    #: Per shard: (last id, first kept id if the head was trimmed).
    infos: list[tuple[StreamId | None, StreamId | None]]
    #: The ``HGETALL`` of the saved cursor; None when not asked for.
    saved: Any


async def query_setup(conn: RespConnection, names: StreamNames, load: bool) -> SetupReplies | None:
    """Ask the setup questions on ``conn`` (before it reads); None if the connection
    was lost. Raises :class:`StreamReplyError` when Redis refused one."""
    requests = [
        conn.request("SET", names.epoch, secrets.token_hex(8), "NX"),
        conn.request("GET", names.epoch),
        conn.request("TIME"),
        *(conn.request("XINFO", "STREAM", key) for key in names.streams),
    ]
    if load:
        requests.append(conn.request("HGETALL", names.cursor))
    replies = await asyncio.gather(*requests, return_exceptions=True)
    answered = time.time()
    for reply in replies:
        if isinstance(reply, ConnectionError):
            return None  # the keeper reconnects
        if isinstance(reply, BaseException) and not isinstance(reply, hiredis.ReplyError):
            raise reply
    epoch, now = replies[1], replies[2]
    saved = replies[-1] if load else None
    for reply in (epoch, now, saved):
        if isinstance(reply, hiredis.ReplyError):
            raise StreamReplyError(f"Redis refused the stream setup: {reply}")
    infos = [stream_info(r) for r in replies[3 : 3 + len(names.streams)]]
    return SetupReplies(epoch, now, answered, infos, saved)


def merge_newest(shards: list[list[tuple[StreamId, bytes]]], count: int | None) -> list[bytes]:
    """Every shard's findings merged by stream id, oldest first; the newest ``count``."""
    entries = [entry for shard in shards for entry in shard]
    entries.sort(key=lambda entry: entry[0])
    if count is not None:
        entries = entries[-count:]
    return [frame for _, frame in entries]


async def read_history(
    request: Request,
    key: bytes,
    match: Callable[[str], bool],
    count: int | None,
    since_ms: int | None,
    *,
    retention: int,
    check: ValueCheck,
) -> list[tuple[StreamId, bytes]]:
    """Newest first from one stream, page by page, until enough matched."""
    start = b"%d" % since_ms if since_ms is not None else b"-"
    page = HISTORY_PAGE if count is None else min(HISTORY_PAGE, max(count, 100))
    end: bytes = b"+"
    found: list[tuple[StreamId, bytes]] = []
    scanned = size = 0
    while True:
        reply = await request(encode_command("XREVRANGE", key, end, start, "COUNT", page))
        if isinstance(reply, Exception):
            raise BridgeError(f"stream history: Redis refused XREVRANGE: {reply}")
        if not isinstance(reply, list):
            raise BridgeError(f"stream history: unexpected XREVRANGE reply {reply!r:.80}")
        for raw_id, fields in reply:
            frame = _history_frame(fields, match, check)
            if frame is not None:
                found.append((parse_id(raw_id), frame))
                size += len(frame)
                # Past what a reply carries (it says so): no more is needed.
                if (count is not None and len(found) >= count) or size > HISTORY_MAX_BYTES:
                    return found
        scanned += len(reply)
        # The stream holds about `retention` entries; the bound guards a racing writer.
        if len(reply) < page or scanned >= 2 * retention + page:
            return found
        below = id_before(parse_id(reply[-1][0]))
        if below is None:
            return found
        end = format_id(below)


def _history_frame(fields: Any, match: Callable[[str], bool], check: ValueCheck) -> bytes | None:
    if not isinstance(fields, list) or len(fields) != 2:
        return None
    channel, value = fields
    if channel.startswith(_INBOX) or not check.readable(value):
        return None
    try:
        name = channel.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not match(name):
        return None
    return b"".join((channel, b"\0", value[STAMP_OFFSET:]))
