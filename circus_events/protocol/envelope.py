"""The message envelope and its two encodings: a ZeroMQ frame and a Redis value.

Theory of operation
-------------------
A message is one ZeroMQ frame (one frame is 2-3x faster than multipart in
pyzmq, and ZeroMQ's prefix filter still sees the topic first)::

    channel | NUL | header (32 bytes) | origin | host | [direct channel] | payload

The fixed header is ``<BBBBBBxxQQd``: version, flags, codec, length of the
origin worker id, length of the host name, length of the direct channel,
two pad bytes, origin epoch, sequence number, time (Unix seconds, float).
The message id is (origin, epoch, channel, seq): the sequence runs per
(origin, channel) because each subscriber sees only some channels of an
origin, and the epoch changes when the origin restarts.

A direct message (``send_to``) travels on the target's inbox channel
``@w:<worker>``; the user's channel rides in the header.

A batch (``FLAG_BATCH``) carries several consecutive messages of one origin
on one channel with the same flags and codec in one frame: a worker that
publishes faster than one frame per message can afford sends them so. Its
header holds the first message's sequence number and time; the following
number is one higher each, and the body after the names is::

    count (u32) | times (count x f64) | payload lengths (count x u32) | payloads

ZeroMQ's prefix filter, Redis and the bridge treat a batch as one message:
per-message Python work, not bytes, is what limits throughput, so moving 50
messages costs about what moving one did.

In Redis the channel is the Redis channel (or stream field), so the value is
``REDIS_VERSION | relaying node id (8 bytes) | header | ... | payload``: the node
id lets a bridge drop its own messages when Redis echoes them back.

Decoding is strict: anything malformed raises :class:`ProtocolError`, and
nothing else, whatever the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise
from typing import Any, Final, NamedTuple

from .._exceptions import ChannelError, ProtocolError
from .codec import Codec
from .topics import INBOX_PREFIX, LEADER_EVENTS_PREFIX, validate_channel, validate_worker_id

__all__ = [
    "FLAG_BATCH",
    "FLAG_DIRECT",
    "FLAG_HOST_ONLY",
    "FLAG_NOTICE",
    "FLAG_REPLAY",
    "HEADER",
    "MAX_BATCH_COUNT",
    "NODE_ID_BYTES",
    "REPLAY_TOKEN_BYTES",
    "VERSION",
    "Envelope",
    "batch_items",
    "check_frame",
    "decode_frame",
    "decode_messages",
    "encode_batch",
    "encode_frame",
    "frame_from_redis",
    "frame_to_redis",
    "single_envelopes",
    "split_topic",
]

VERSION: Final = 1
REDIS_VERSION: Final = 1
HEADER: Final = struct.Struct("<BBBBBBxxQQd")
NODE_ID_BYTES: Final = 8

#: ``scope="host"``: the bridge delivers locally and never sends it to Redis.
FLAG_HOST_ONLY: Final = 0x01
#: A direct message: the topic is an inbox, the user's channel is in the header.
FLAG_DIRECT: Final = 0x02
#: A history entry the bridge replays to one worker (``subscribe(history=N)``):
#: direct, with the original channel, origin, epoch and sequence; its payload
#: starts with the request's token (``REPLAY_TOKEN_BYTES``).
FLAG_REPLAY: Final = 0x04
REPLAY_TOKEN_BYTES: Final = 8
#: Several consecutive messages in one frame (see the module docstring).
FLAG_BATCH: Final = 0x08
#: Most messages one batch may carry (a bound for the receiver's work).
MAX_BATCH_COUNT: Final = 4096
_BATCH_COUNT: Final = struct.Struct("<I")
#: A notice from the bridge about the frame's topic, for the sockets that
#: subscribe to it (a subscription refused past ``max_subscriptions``); the
#: payload is ``\x01`` (exact channel) or ``\x00`` (pattern prefix) and a text.
#: Never an event.
FLAG_NOTICE: Final = 0x10
_KNOWN_FLAGS: Final = FLAG_HOST_ONLY | FLAG_DIRECT | FLAG_REPLAY | FLAG_BATCH | FLAG_NOTICE
_INBOX_PREFIX_BYTES: Final = INBOX_PREFIX.encode("utf-8")
_MAX_TOPIC_SCAN: Final = 512


class Envelope(NamedTuple):
    """One decoded message. ``channel`` is the user's channel, also for direct ones."""

    channel: str
    origin: str
    host: str
    epoch: int
    seq: int
    time: float
    codec: int
    flags: int
    payload: bytes
    #: For a direct message: the worker id it was sent to; else None.
    target: str | None = None
    #: Messages in the frame: 1, or more for a batch (whose ``payload`` is then
    #: the batch body; :func:`batch_items` splits it).
    messages: int = 1


def encode_frame(
    channel: str,
    *,
    origin: bytes,
    host: bytes,
    epoch: int,
    seq: int,
    time: float,
    codec: Codec,
    payload: bytes,
    flags: int = 0,
    target: str | None = None,
) -> bytes:
    """Encode one message frame. ``origin`` and ``host`` are pre-encoded UTF-8.

    The caller has validated ``channel`` (this runs on the publish hot path).
    """
    if target is not None:
        direct = channel.encode("utf-8")
        topic = (INBOX_PREFIX + target).encode("utf-8")
        flags |= FLAG_DIRECT
    else:
        direct = b""
        topic = channel.encode("utf-8")
    head = HEADER.pack(VERSION, flags, codec, len(origin), len(host), len(direct), epoch, seq, time)
    return b"".join((topic, b"\0", head, origin, host, direct, payload))


def encode_batch(
    channel: str,
    *,
    origin: bytes,
    host: bytes,
    epoch: int,
    first_seq: int,
    times: Sequence[float],
    codec: Codec,
    payloads: Sequence[bytes],
    flags: int = 0,
    target: str | None = None,
) -> bytes:
    """Encode consecutive messages ``first_seq``, ``first_seq + 1``... as one frame.

    One message gives a plain frame, so a receiver sees a batch only when
    there is something to gain.
    """
    count = len(payloads)
    if count == 1:
        payload = payloads[0]
    else:
        table = struct.pack(f"<I{count}d{count}I", count, *times, *map(len, payloads))
        payload = table + b"".join(payloads)
        flags |= FLAG_BATCH
    return encode_frame(
        channel,
        origin=origin,
        host=host,
        epoch=epoch,
        seq=first_seq,
        time=times[0],
        codec=codec,
        payload=payload,
        flags=flags,
        target=target,
    )


def batch_items(envelope: Envelope) -> tuple[tuple[float, ...], list[bytes]]:
    """The (times, payloads) of a batch that :func:`decode_frame` accepted."""
    count = envelope.messages
    body = envelope.payload
    fields = struct.unpack_from(f"<{count}d{count}I", body, 4)
    ends = list(accumulate(fields[count:], initial=4 + 12 * count))
    return fields[:count], [body[start:end] for start, end in pairwise(ends)]


def single_envelopes(envelope: Envelope) -> list[Envelope]:
    """The messages of a frame, one envelope each (a batch split up)."""
    if envelope.messages == 1:
        return [envelope]
    times, payloads = batch_items(envelope)
    flags = envelope.flags & ~FLAG_BATCH
    seq = envelope.seq
    return [
        envelope._replace(seq=seq + i, time=times[i], payload=payloads[i], flags=flags, messages=1)
        for i in range(envelope.messages)
    ]


def _batch_table(frame: bytes, start: int, seq: int) -> tuple[Any, ...]:
    """Check the layout of the batch body at ``frame[start:]``; return its
    table: ``count`` times, then ``count`` payload lengths."""
    size = len(frame) - start
    if size < _BATCH_COUNT.size:
        raise ProtocolError("batch has no message count")
    (count,) = _BATCH_COUNT.unpack_from(frame, start)
    if not 2 <= count <= MAX_BATCH_COUNT:
        raise ProtocolError(f"batch of {count} messages (a batch holds 2 to {MAX_BATCH_COUNT})")
    table = 4 + 12 * count
    if size < table:
        raise ProtocolError("batch is shorter than its table of times and lengths")
    fields = struct.unpack_from(f"<{count}d{count}I", frame, start + 4)
    if sum(fields[count:]) != size - table:
        raise ProtocolError("batch payload lengths do not add up to its size")
    # A finite sum means finite times (inf and nan carry through a sum), at a
    # third of the cost of testing each; an overflowing sum tests each.
    if not math.isfinite(sum(fields[:count])) and not all(map(math.isfinite, fields[:count])):
        raise ProtocolError("message time is not a finite number")
    if seq + count - 1 > _MAX_SEQ:
        raise ProtocolError("batch sequence numbers overflow")
    return fields


_MAX_SEQ: Final = (1 << 64) - 1


def split_topic(frame: bytes) -> int:
    """Return the index of the NUL that ends the topic; raise if there is none."""
    end = frame.find(b"\0", 0, _MAX_TOPIC_SCAN)
    if end <= 0:
        raise ProtocolError("frame has no topic (no NUL in its first bytes, or it starts with one)")
    return end


def decode_frame(frame: bytes) -> Envelope:
    """Decode and validate a frame; raise :class:`ProtocolError` if malformed."""
    end = split_topic(frame)
    return _decode_after_topic(frame, frame[:end], end + 1, True)[0]


def check_frame(frame: bytes) -> Envelope:
    """Validate a frame like :func:`decode_frame`, but leave its payload out
    (``payload`` is empty): a relay forwards the frame itself, and copying
    a 16 KiB batch body to look at its header was a fifth of its work."""
    end = split_topic(frame)
    return _decode_after_topic(frame, frame[:end], end + 1, False)[0]


def decode_messages(frame: bytes) -> tuple[Envelope, Sequence[float], list[int]]:
    """Decode and validate a frame for a receiver that takes its messages one
    by one: the envelope (``payload`` left empty), each message's time, and
    where each payload lies in ``frame``. Message ``i`` has the sequence
    number ``envelope.seq + i`` and the payload ``frame[bounds[i]:bounds[i + 1]]``.

    Slicing payloads straight from the frame saves copying a batch's body
    and reading its table twice.
    """
    end = split_topic(frame)
    envelope, body, table = _decode_after_topic(frame, frame[:end], end + 1, False)
    if table is None:
        return envelope, (envelope.time,), [body, len(frame)]
    count = envelope.messages
    bounds = list(accumulate(table[count:], initial=body + 4 + 12 * count))
    return envelope, table[:count], bounds


def _decode_after_topic(
    frame: bytes, topic: bytes, start: int, keep_payload: bool
) -> tuple[Envelope, int, tuple[Any, ...] | None]:
    """The envelope (with its payload or not), where the payload (or batch
    body) starts, and a batch's table (None for one message)."""
    if len(frame) < start + HEADER.size:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than its header")
    version, flags, codec, n_origin, n_host, n_direct, epoch, seq, when = HEADER.unpack_from(
        frame, start
    )
    if version != VERSION:
        raise ProtocolError(f"unsupported message version {version} (this side speaks {VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown flags 0x{flags:02x}")
    if flags & FLAG_REPLAY and not flags & FLAG_DIRECT:
        raise ProtocolError("a replayed history entry must be addressed to one worker")
    if flags & FLAG_REPLAY and flags & FLAG_BATCH:
        raise ProtocolError("a replayed history entry is one message, not a batch")
    if codec not in _CODEC_IDS:
        raise ProtocolError(f"unknown codec id {codec}")
    if not math.isfinite(when):
        raise ProtocolError("message time is not a finite number")
    pos = start + HEADER.size
    mid = pos + n_origin
    end = mid + n_host + n_direct
    if len(frame) < end:
        raise ProtocolError("frame is shorter than the lengths its header gives")
    # Cache hits inline (the common case); _name validates what is new.
    raw = frame[pos:mid]
    origin = _WORKERS.get(raw) or _name(raw, _WORKERS, validate_worker_id)
    raw = frame[mid : mid + n_host]
    host = _WORKERS.get(raw) or _name(raw, _WORKERS, validate_worker_id)
    target: str | None = None
    if not flags & FLAG_DIRECT and not n_direct:
        channel = _CHANNELS.get(topic) or _name(topic, _CHANNELS, _validate_broadcast_channel)
    elif flags & FLAG_DIRECT:
        # The topic is "@w:" and a worker id, which may be longer than a channel
        # name and hold characters (* ? [ ] \\) that a channel may not.
        if not topic.startswith(_INBOX_PREFIX_BYTES):
            raise ProtocolError("a direct message must travel on an inbox channel")
        target = _name(topic[len(_INBOX_PREFIX_BYTES) :], _WORKERS, validate_worker_id)
        channel = _name(frame[mid + n_host : end], _SYSTEM, _validate_system_channel)
    else:
        raise ProtocolError("only a direct message carries a second channel")
    if flags & FLAG_BATCH:
        table = _batch_table(frame, end, seq)
        count = len(table) // 2
    else:
        table = None
        count = 1
    payload = frame[end:] if keep_payload else b""
    envelope = Envelope(
        channel, origin, host, epoch, seq, when, codec, flags, payload, target, count
    )
    return envelope, end, table


def _validate_broadcast_channel(name: str) -> bytes:
    # The bridges publish leadership changes on @leader.<role>.
    return validate_channel(name, allow_system=name.startswith(LEADER_EVENTS_PREFIX))


def _validate_system_channel(name: str) -> bytes:
    return validate_channel(name, allow_system=True)


#: Names already validated, by their bytes, one cache per kind of name (a
#: valid worker id is not always a valid channel). Origins, hosts and channels
#: repeat on every message; validating each once takes decoding from ~3.3 us
#: to ~1.4 us.
_WORKERS: dict[bytes, str] = {}
_CHANNELS: dict[bytes, str] = {}
_SYSTEM: dict[bytes, str] = {}
_MAX_CACHED_NAMES: Final = 4096


def _name(raw: bytes, cache: dict[bytes, str], validate: Callable[[str], bytes]) -> str:
    """Decode and validate a name, remembering good ones (bounded)."""
    name = cache.get(raw)
    if name is not None:
        return name
    try:
        name = raw.decode("utf-8")
        validate(name)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"a name in the frame is not UTF-8: {exc.reason}") from None
    except ChannelError as exc:
        raise ProtocolError(f"invalid name in frame: {exc}") from None
    if len(cache) >= _MAX_CACHED_NAMES:
        cache.clear()
    cache[raw] = name
    return name


_CODEC_IDS: Final = frozenset(int(c) for c in Codec)


def frame_to_redis(frame: bytes, topic_end: int, node_id: bytes) -> bytes:
    """The Redis value of a frame: its header and payload, stamped with our node id."""
    return b"".join((bytes((REDIS_VERSION,)), node_id, frame[topic_end + 1 :]))


def frame_from_redis(channel: bytes, value: bytes) -> tuple[bytes, bytes]:
    """Split a Redis value into (relaying node id, local frame for ``channel``).

    The frame is not validated here; the caller decodes it before delivery.
    """
    if len(value) < 1 + NODE_ID_BYTES or value[0] != REDIS_VERSION:
        raise ProtocolError("Redis value is not a circus-events message")
    return value[1 : 1 + NODE_ID_BYTES], b"".join((channel, b"\0", value[1 + NODE_ID_BYTES :]))
