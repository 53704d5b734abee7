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

In Redis the channel is the Redis channel (or stream field), so the value is
``REDIS_VERSION | relaying node id (8 bytes) | header | ... | payload``: the node
id lets a bridge drop its own messages when Redis echoes them back.

Decoding is strict: anything malformed raises :class:`ProtocolError`, and
nothing else, whatever the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Final, NamedTuple

from .._exceptions import ChannelError, ProtocolError
from .codec import Codec
from .topics import INBOX_PREFIX, validate_channel, validate_worker_id

__all__ = [
    "FLAG_DIRECT",
    "FLAG_HOST_ONLY",
    "FLAG_REPLAY",
    "HEADER",
    "NODE_ID_BYTES",
    "REPLAY_TOKEN_BYTES",
    "VERSION",
    "Envelope",
    "decode_frame",
    "encode_frame",
    "frame_from_redis",
    "frame_to_redis",
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
_KNOWN_FLAGS: Final = FLAG_HOST_ONLY | FLAG_DIRECT | FLAG_REPLAY
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


def split_topic(frame: bytes) -> int:
    """Return the index of the NUL that ends the topic; raise if there is none."""
    end = frame.find(b"\0", 0, _MAX_TOPIC_SCAN)
    if end <= 0:
        raise ProtocolError("frame has no topic (no NUL in its first bytes, or it starts with one)")
    return end


def decode_frame(frame: bytes) -> Envelope:
    """Decode and validate a frame; raise :class:`ProtocolError` if malformed."""
    end = split_topic(frame)
    return _decode_after_topic(frame, frame[:end], end + 1)


def _decode_after_topic(frame: bytes, topic: bytes, start: int) -> Envelope:
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
        channel = _CHANNELS.get(topic) or _name(topic, _CHANNELS, validate_channel)
    elif flags & FLAG_DIRECT:
        # The topic is "@w:" and a worker id, which may be longer than a channel
        # name and hold characters (* ? [ ] \\) that a channel may not.
        if not topic.startswith(_INBOX_PREFIX_BYTES):
            raise ProtocolError("a direct message must travel on an inbox channel")
        target = _name(topic[len(_INBOX_PREFIX_BYTES) :], _WORKERS, validate_worker_id)
        channel = _name(frame[mid + n_host : end], _SYSTEM, _validate_system_channel)
    else:
        raise ProtocolError("only a direct message carries a second channel")
    return Envelope(channel, origin, host, epoch, seq, when, codec, flags, frame[end:], target)


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
