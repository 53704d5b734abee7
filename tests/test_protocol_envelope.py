"""The message frame and its Redis value: exact bytes, strict decoding, round trips."""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circus_events._exceptions import ProtocolError
from circus_events.protocol import envelope
from circus_events.protocol.codec import Codec
from circus_events.protocol.envelope import (
    FLAG_BATCH,
    FLAG_DIRECT,
    FLAG_HOST_ONLY,
    FLAG_REPLAY,
    HEADER,
    MAX_BATCH_COUNT,
    NODE_ID_BYTES,
    VERSION,
    Envelope,
    batch_items,
    check_frame,
    decode_frame,
    decode_messages,
    encode_batch,
    encode_frame,
    frame_from_redis,
    frame_to_redis,
    single_envelopes,
    split_topic,
)
from circus_events.protocol.topics import MAX_CHANNEL_BYTES, MAX_WORKER_ID_BYTES

NODE = b"node-id8"


def u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def make_frame(
    topic: bytes = b"orders.paid",
    *,
    version: int = VERSION,
    flags: int = 0,
    codec: int = Codec.JSON,
    origin: bytes = b"w1",
    host: bytes = b"h1",
    direct: bytes = b"",
    epoch: int = 1,
    seq: int = 2,
    time: float = 0.5,
    payload: bytes = b"{}",
    lengths: tuple[int, int, int] | None = None,
) -> bytes:
    """A frame built by hand, so that tests can break any one part of it."""
    n_origin, n_host, n_direct = lengths or (len(origin), len(host), len(direct))
    head = HEADER.pack(version, flags, codec, n_origin, n_host, n_direct, epoch, seq, time)
    return topic + b"\0" + head + origin + host + direct + payload


# ---------------------------------------------------------------------------
# The wire format, byte for byte
# ---------------------------------------------------------------------------


def test_header_layout() -> None:
    assert HEADER.size == 32
    assert VERSION == 1
    assert (FLAG_HOST_ONLY, FLAG_DIRECT, NODE_ID_BYTES) == (0x01, 0x02, 8)


# (encode_frame arguments, exact frame, decoded envelope)
WIRE: list[tuple[dict[str, object], bytes, Envelope]] = [
    (
        {
            "channel": "a.b",
            "origin": b"w1",
            "host": b"h",
            "epoch": 1,
            "seq": 2,
            "time": 0.5,
            "codec": Codec.JSON,
            "payload": b"{}",
        },
        b"a.b\0"
        + bytes([1, 0, 1, 2, 1, 0, 0, 0])
        + u64(1)
        + u64(2)
        + bytes.fromhex("000000000000e03f")
        + b"w1h{}",
        Envelope("a.b", "w1", "h", 1, 2, 0.5, 1, 0, b"{}"),
    ),
    (
        {
            "channel": "jobs",
            "origin": b"w1",
            "host": b"h",
            "epoch": 3,
            "seq": 4,
            "time": 0.0,
            "codec": Codec.RAW,
            "payload": b"x\0y",
            "flags": FLAG_HOST_ONLY,
            "target": "w2",
        },
        b"@w:w2\0" + bytes([1, 3, 0, 2, 1, 4, 0, 0]) + u64(3) + u64(4) + bytes(8) + b"w1hjobsx\0y",
        Envelope("jobs", "w1", "h", 3, 4, 0.0, 0, 3, b"x\0y", "w2"),
    ),
    (
        {
            "channel": "é",
            "origin": "wé".encode(),
            "host": b"host-1",
            "epoch": 2**64 - 1,
            "seq": 0,
            "time": -1.0,
            "codec": Codec.MSGPACK,
            "payload": b"",
        },
        "é\0".encode()
        + bytes([1, 0, 2, 3, 6, 0, 0, 0])
        + b"\xff" * 8
        + u64(0)
        + bytes.fromhex("000000000000f0bf")
        + "wé".encode()
        + b"host-1",
        Envelope("é", "wé", "host-1", 2**64 - 1, 0, -1.0, 2, 0, b""),
    ),
]


@pytest.mark.parametrize(("kwargs", "frame", "expected"), WIRE)
def test_wire_format(kwargs: dict[str, object], frame: bytes, expected: Envelope) -> None:
    assert encode_frame(**kwargs) == frame  # type: ignore[arg-type]
    assert decode_frame(frame) == expected
    # Decoding again gives the same answer (names are cached after the first time).
    assert decode_frame(frame) == expected
    assert split_topic(frame) == frame.index(b"\0")


def test_split_topic() -> None:
    assert split_topic(b"a\0rest") == 1
    assert split_topic(b"x" * 511 + b"\0") == 511
    for bad in (b"", b"\0a", b"abc", b"x" * 512 + b"\0"):
        with pytest.raises(ProtocolError, match="no topic"):
            split_topic(bad)


# ---------------------------------------------------------------------------
# Strict decoding
# ---------------------------------------------------------------------------

INBOX = b"@w:w2"
# (frame, fragment of the error message)
BAD_FRAMES: list[tuple[bytes, str]] = [
    (b"", "no topic"),
    (b"\0" + make_frame()[len(b"orders.paid\0") :], "no topic"),
    (b"x" * 600, "no topic"),
    (make_frame(b"x" * 512), "no topic"),
    (make_frame()[: len(b"orders.paid\0") + HEADER.size - 1], "shorter than its header"),
    (b"a\0", "shorter than its header"),
    (make_frame(version=0), "unsupported message version 0"),
    (make_frame(version=2), "unsupported message version 2"),
    (make_frame(flags=0x20), "unknown flags 0x20"),
    (make_frame(flags=0x04), "must be addressed to one worker"),
    (make_frame(flags=0x80 | FLAG_HOST_ONLY), "unknown flags 0x81"),
    (make_frame(codec=3), "unknown codec id 3"),
    (make_frame(codec=255), "unknown codec id 255"),
    (make_frame(time=float("nan")), "not a finite number"),
    (make_frame(time=float("inf")), "not a finite number"),
    (make_frame(time=float("-inf")), "not a finite number"),
    (make_frame(payload=b"", lengths=(2, 3, 0)), "shorter than the lengths"),
    (make_frame(payload=b"", lengths=(255, 255, 255)), "shorter than the lengths"),
    (make_frame(b"\xff"), "not UTF-8"),
    (make_frame(origin=b"\xc3"), "not UTF-8"),
    (make_frame(host=b"h\xff"), "not UTF-8"),
    (make_frame(origin=b""), "worker id must not be empty"),
    (make_frame(host=b""), "worker id must not be empty"),
    (make_frame(origin=b"w\n"), "forbidden character"),
    (make_frame(host=b"h\x7f"), "forbidden character"),
    (make_frame(origin=b"x" * (MAX_WORKER_ID_BYTES + 1)), "the limit is 200"),
    (make_frame(b"x" * (MAX_CHANNEL_BYTES + 1)), "the limit is 200"),
    (make_frame(b"a*b"), "glob character"),
    (make_frame(b"a]"), "forbidden character"),
    (make_frame(b"a\\b"), "forbidden character"),
    (make_frame(b"a\nb"), "forbidden character"),
    (make_frame(b"@w:w2"), "reserved"),  # an inbox frame must be direct
    (make_frame(b"@ctl"), "reserved"),
    (make_frame(direct=b"jobs"), "only a direct message carries a second channel"),
    (make_frame(b"orders", flags=FLAG_DIRECT, direct=b"jobs"), "must travel on an inbox"),
    (make_frame(b"@x:w2", flags=FLAG_DIRECT, direct=b"jobs"), "must travel on an inbox"),
    (make_frame(b"@w:", flags=FLAG_DIRECT, direct=b"jobs"), "worker id must not be empty"),
    (make_frame(b"@w:w\x01", flags=FLAG_DIRECT, direct=b"jobs"), "forbidden character"),
    (make_frame(INBOX, flags=FLAG_DIRECT, direct=b""), "channel must not be empty"),
    (make_frame(INBOX, flags=FLAG_DIRECT, direct=b"a*"), "glob character"),
    (make_frame(INBOX, flags=FLAG_DIRECT, direct=b"\xff"), "not UTF-8"),
]


@pytest.mark.parametrize(("frame", "message"), BAD_FRAMES)
def test_decode_refuses(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame)
    assert message in str(info.value)


def test_direct_to_any_worker_id() -> None:
    """Worker ids are any printable text, so an inbox topic may hold glob characters."""
    for worker in ("a*b", "w]1", "back\\slash", "x" * MAX_WORKER_ID_BYTES):
        frame = encode_frame(
            "jobs", origin=b"w1", host=b"h", epoch=0, seq=0, time=0.0, codec=Codec.RAW,
            payload=b"", target=worker,
        )  # fmt: skip
        assert decode_frame(frame).target == worker


def test_direct_on_a_system_channel() -> None:
    """The bus answers a worker (sync, flush) directly, on its own '@' channels."""
    for channel in (b"@sync", b"@flush"):
        env = decode_frame(make_frame(INBOX, flags=FLAG_DIRECT, direct=channel))
        assert (env.channel, env.target) == (channel.decode(), "w2")


def test_a_valid_worker_id_is_not_a_valid_channel() -> None:
    """A name accepted as an origin must still be refused as a channel."""
    assert decode_frame(make_frame(b"ok", origin=b"a*b")).origin == "a*b"
    with pytest.raises(ProtocolError, match="glob character"):
        decode_frame(make_frame(b"a*b"))
    with pytest.raises(ProtocolError, match="glob character"):
        decode_frame(make_frame(INBOX, flags=FLAG_DIRECT, direct=b"a*b"))


def test_many_distinct_names() -> None:
    """Decoding stays correct past the bound on remembered names."""
    count = 2 * envelope._MAX_CACHED_NAMES + 1
    for i in range(count):
        origin = f"worker-{i}".encode()
        assert decode_frame(make_frame(origin=origin)).origin == origin.decode()
    assert len(envelope._WORKERS) <= envelope._MAX_CACHED_NAMES


# ---------------------------------------------------------------------------
# Redis values
# ---------------------------------------------------------------------------


def test_redis_value_layout() -> None:
    frame = make_frame(b"orders.paid")
    end = split_topic(frame)
    value = frame_to_redis(frame, end, NODE)
    assert value == b"\x01" + NODE + frame[end + 1 :]
    assert frame_from_redis(b"orders.paid", value) == (NODE, frame)


def test_redis_value_minimal() -> None:
    assert frame_from_redis(b"c", b"\x01" + NODE) == (NODE, b"c\0")


@pytest.mark.parametrize(
    "value",
    [b"", b"\x01", b"\x01" + NODE[:-1], b"\x02" + NODE + b"rest", b"\x00" + NODE, b"{}"],
)
def test_redis_value_refused(value: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a circus-events message"):
        frame_from_redis(b"orders", value)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

CONTROL = "".join(map(chr, range(32))) + "\x7f"


def _fits(limit: int) -> Callable[[str], bool]:
    return lambda name: len(name.encode("utf-8")) <= limit


worker_ids = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters=CONTROL), min_size=1, max_size=30),
    st.text(st.characters(codec="utf-8", exclude_characters=CONTROL), min_size=1, max_size=200),
    st.sampled_from(["x" * MAX_WORKER_ID_BYTES, "é" * (MAX_WORKER_ID_BYTES // 2), "a*]\\"]),
).filter(_fits(MAX_WORKER_ID_BYTES))

channels = (
    st.one_of(
        st.text(
            st.characters(codec="utf-8", exclude_characters=CONTROL + "\\]*?["),
            min_size=1,
            max_size=30,
        ),
        st.sampled_from(["x" * MAX_CHANNEL_BYTES, "é" * (MAX_CHANNEL_BYTES // 2), "orders.paid"]),
    )
    .filter(_fits(MAX_CHANNEL_BYTES))
    .filter(lambda name: not name.startswith("@"))
)


class Message(NamedTuple):
    """What a publisher hands to ``encode_frame``, with names as text."""

    channel: str
    origin: str
    host: str
    epoch: int
    seq: int
    time: float
    codec: int
    flags: int
    payload: bytes
    target: str | None

    def encode(self) -> bytes:
        return encode_frame(
            self.channel,
            origin=self.origin.encode("utf-8"),
            host=self.host.encode("utf-8"),
            epoch=self.epoch,
            seq=self.seq,
            time=self.time,
            codec=Codec(self.codec),
            payload=self.payload,
            flags=self.flags,
            target=self.target,
        )


messages = st.builds(
    Message,
    channel=channels,
    origin=worker_ids,
    host=worker_ids,
    epoch=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
    time=st.floats(allow_nan=False, allow_infinity=False),
    codec=st.sampled_from(Codec),
    payload=st.binary(max_size=300),
    flags=st.sampled_from([0, FLAG_HOST_ONLY]),
    target=st.none() | worker_ids,
)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_frame_round_trip(message: Message) -> None:
    frame = message.encode()
    flags = message.flags | (FLAG_DIRECT if message.target is not None else 0)
    assert decode_frame(frame) == Envelope(*message._replace(flags=flags))
    topic = message.channel if message.target is None else f"@w:{message.target}"
    assert frame[: split_topic(frame)] == topic.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(messages, st.binary(min_size=NODE_ID_BYTES, max_size=NODE_ID_BYTES))
def test_redis_round_trip(message: Message, node: bytes) -> None:
    frame = message.encode()
    end = split_topic(frame)
    value = frame_to_redis(frame, end, node)
    assert frame_from_redis(frame[:end], value) == (node, frame)
    assert decode_frame(frame_from_redis(frame[:end], value)[1]) == decode_frame(frame)


@st.composite
def damaged_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with a few bytes overwritten, cut off or inserted."""
    frame = bytearray(draw(messages).encode())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["overwrite", "truncate", "insert"]))
        at = draw(st.integers(0, len(frame)))
        if action == "overwrite" and at < len(frame):
            frame[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del frame[at:]
        else:
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(frame)


@st.composite
def damaged_batches(draw: st.DrawFn) -> bytes:
    """A valid batch with a few bytes overwritten, cut off or inserted."""
    frame = bytearray(draw(batches).encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(frame)))
        if draw(st.booleans()) and at < len(frame):
            frame[at] = draw(st.integers(0, 255))
        else:
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(frame)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400) | damaged_frames() | damaged_batches())
def test_decode_garbage_raises_only_protocol_error(garbage: bytes) -> None:
    try:
        decoded = decode_frame(garbage)
    except ProtocolError:
        # A relay and a receiver of single messages refuse exactly the same.
        with pytest.raises(ProtocolError):
            check_frame(garbage)
        with pytest.raises(ProtocolError):
            decode_messages(garbage)
        return
    assert check_frame(garbage) == decoded._replace(payload=b"")
    assert_messages_match(garbage, decoded)
    assert isinstance(decoded, Envelope)
    # Whatever decodes is a message one could have sent (pad bytes aside).
    again = Message(*decoded._replace(flags=decoded.flags & ~FLAG_DIRECT)[:10]).encode()
    assert decode_frame(again) == decoded


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=60))
def test_redis_garbage_raises_only_protocol_error(channel: bytes, value: bytes) -> None:
    try:
        node, frame = frame_from_redis(channel, value)
    except ProtocolError:
        return
    assert len(node) == NODE_ID_BYTES
    assert frame == channel + b"\0" + value[1 + NODE_ID_BYTES :]


def test_struct_is_little_endian() -> None:
    """The header does not depend on the host's byte order."""
    assert HEADER.format == "<BBBBBBxxQQd"
    assert HEADER.size == struct.calcsize("<BBBBBBxxQQd")


# ---------------------------------------------------------------------------
# Batches: several consecutive messages in one frame
# ---------------------------------------------------------------------------


class Batch(NamedTuple):
    """What a publisher hands to ``encode_batch``."""

    message: Message
    times: list[float]
    payloads: list[bytes]

    def encode(self) -> bytes:
        m = self.message
        return encode_batch(
            m.channel,
            origin=m.origin.encode("utf-8"),
            host=m.host.encode("utf-8"),
            epoch=m.epoch,
            first_seq=m.seq,
            times=self.times,
            codec=Codec(m.codec),
            payloads=self.payloads,
            flags=m.flags,
            target=m.target,
        )


@st.composite
def _batches(draw: st.DrawFn) -> Batch:
    payloads = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=20))
    times = draw(
        st.lists(
            st.floats(allow_nan=False, allow_infinity=False),
            min_size=len(payloads),
            max_size=len(payloads),
        )
    )
    message = draw(messages)
    message = message._replace(seq=min(message.seq, 2**64 - len(payloads)))
    return Batch(message, times, payloads)


batches = _batches()


def test_batch_layout() -> None:
    frame = encode_batch(
        "orders.paid", origin=b"w1", host=b"h1", epoch=1, first_seq=2, times=[0.5, 0.75],
        codec=Codec.RAW, payloads=[b"ab", b"c"],
    )  # fmt: skip
    body = struct.pack("<I2d2I", 2, 0.5, 0.75, 2, 1) + b"abc"
    assert frame == make_frame(flags=FLAG_BATCH, codec=Codec.RAW, payload=body)
    decoded = decode_frame(frame)
    assert (decoded.messages, decoded.seq, decoded.time, decoded.payload) == (2, 2, 0.5, body)
    assert batch_items(decoded) == ((0.5, 0.75), [b"ab", b"c"])
    assert check_frame(frame) == decoded._replace(payload=b"")
    envelope, times, bounds = decode_messages(frame)
    assert (envelope, times) == (decoded._replace(payload=b""), (0.5, 0.75))
    assert [frame[a:b] for a, b in pairwise(bounds)] == [b"ab", b"c"]


def assert_messages_match(frame: bytes, decoded: Envelope) -> None:
    """decode_messages gives what decode_frame and single_envelopes give."""
    envelope, times, bounds = decode_messages(frame)
    assert envelope == decoded._replace(payload=b"")
    singles = single_envelopes(decoded)
    assert list(times) == [single.time for single in singles]
    assert [frame[a:b] for a, b in pairwise(bounds)] == [single.payload for single in singles]
    assert bounds[-1] == len(frame)


def test_messages_of_a_plain_frame() -> None:
    frame = make_frame(payload=b"{}")
    assert_messages_match(frame, decode_frame(frame))


def test_batch_times_may_be_huge_if_finite() -> None:
    """Finite times whose sum overflows are still finite times."""
    body = _batch_body(2, [1.7e308, 1.7e308], [1, 1], b"ab")
    assert decode_frame(make_frame(flags=FLAG_BATCH, payload=body)).messages == 2


def test_a_batch_of_one_is_a_plain_frame() -> None:
    one = encode_batch(
        "orders.paid", origin=b"w1", host=b"h1", epoch=1, first_seq=2, times=[0.5],
        codec=Codec.JSON, payloads=[b"{}"],
    )  # fmt: skip
    assert one == make_frame()
    assert single_envelopes(decode_frame(one)) == [decode_frame(one)]


@settings(max_examples=200, deadline=None)
@given(batches)
def test_batch_round_trip(batch: Batch) -> None:
    frame = batch.encode()
    decoded = decode_frame(frame)
    m = batch.message
    assert decoded.messages == len(batch.payloads)
    assert (decoded.channel, decoded.origin, decoded.host) == (m.channel, m.origin, m.host)
    assert (decoded.epoch, decoded.seq, decoded.target) == (m.epoch, m.seq, m.target)
    assert_messages_match(frame, decoded)
    singles = single_envelopes(decoded)
    flags = m.flags | (FLAG_DIRECT if m.target is not None else 0)
    assert singles == [
        Envelope(*m._replace(seq=m.seq + i, time=t, payload=p, flags=flags))
        for i, (t, p) in enumerate(zip(batch.times, batch.payloads, strict=True))
    ]
    end = split_topic(frame)
    assert frame_from_redis(frame[:end], frame_to_redis(frame, end, NODE)) == (NODE, frame)


def _batch_body(count: int, times: list[float], lengths: list[int], data: bytes) -> bytes:
    return struct.pack(f"<I{len(times)}d{len(lengths)}I", count, *times, *lengths) + data


BAD_BATCHES: list[tuple[bytes, str]] = [
    (make_frame(flags=FLAG_BATCH, payload=b"\x02\x00"), "no message count"),
    (make_frame(flags=FLAG_BATCH, payload=_batch_body(1, [0.5], [1], b"a")), "batch of 1"),
    (make_frame(flags=FLAG_BATCH, payload=_batch_body(0, [], [], b"")), "batch of 0"),
    (
        make_frame(flags=FLAG_BATCH, payload=struct.pack("<I", MAX_BATCH_COUNT + 1)),
        f"batch of {MAX_BATCH_COUNT + 1}",
    ),
    (make_frame(flags=FLAG_BATCH, payload=_batch_body(2, [0.5], [1], b"")), "shorter than its"),
    (
        make_frame(flags=FLAG_BATCH, payload=_batch_body(2, [0.5, 0.5], [1, 1], b"a")),
        "do not add up",
    ),
    (
        make_frame(flags=FLAG_BATCH, payload=_batch_body(2, [0.5, 0.5], [1, 1], b"abc")),
        "do not add up",
    ),
    (
        make_frame(flags=FLAG_BATCH, payload=_batch_body(2, [0.5, float("nan")], [1, 1], b"ab")),
        "not a finite number",
    ),
    (
        make_frame(flags=FLAG_BATCH, payload=_batch_body(2, [float("inf"), 0.5], [1, 1], b"ab")),
        "not a finite number",
    ),
    (
        make_frame(
            flags=FLAG_BATCH, payload=_batch_body(2, [1.7e308, float("-inf")], [1, 1], b"ab")
        ),
        "not a finite number",
    ),
    (
        make_frame(
            flags=FLAG_BATCH, seq=2**64 - 1, payload=_batch_body(2, [0.5, 0.5], [1, 1], b"ab")
        ),
        "overflow",
    ),
    (
        make_frame(
            INBOX,
            flags=FLAG_BATCH | FLAG_DIRECT | FLAG_REPLAY,
            direct=b"jobs",
            payload=_batch_body(2, [0.5, 0.5], [1, 1], b"ab"),
        ),
        "not a batch",
    ),
]


@pytest.mark.parametrize(("frame", "message"), BAD_BATCHES)
def test_decode_refuses_bad_batches(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame)
    assert message in str(info.value)
