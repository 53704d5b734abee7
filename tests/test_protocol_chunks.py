"""Large frames cut into pieces for local subscribers and joined again (sans-IO)."""

from __future__ import annotations

import struct

import pytest

from circus_events._exceptions import ProtocolError
from circus_events.protocol import (
    LOCAL_FRAME_MAX,
    Reassembler,
    decode_frame,
    encode_frame,
    is_piece,
    split_frame,
)
from circus_events.protocol.chunks import CHUNK_MARK

PIECE = struct.Struct("<BII")


def frame_of(size: int, channel: str = "big", seq: int = 1) -> bytes:
    return encode_frame(
        channel, origin=b"w", host=b"h", epoch=1, seq=seq, time=0.0, codec=0, payload=b"x" * size
    )


def piece(topic: bytes, index: int, count: int, body: bytes, mark: int = CHUNK_MARK) -> bytes:
    return topic + b"\0" + PIECE.pack(mark, index, count) + body


@pytest.mark.parametrize("size", [0, 100, LOCAL_FRAME_MAX - 200])
def test_a_frame_that_fits_goes_as_it_is(size: int) -> None:
    frame = frame_of(size)
    assert split_frame(frame) == [frame]
    assert not is_piece(frame)


@pytest.mark.parametrize("size", [LOCAL_FRAME_MAX, 512 * 1024, 1024 * 1024 + 7])
def test_a_large_frame_is_cut_and_joined_back(size: int) -> None:
    frame = frame_of(size)
    pieces = split_frame(frame)
    assert len(pieces) > 1
    assert all(len(p) <= LOCAL_FRAME_MAX and p.startswith(b"big\0") for p in pieces)
    assert all(is_piece(p) for p in pieces)
    joiner = Reassembler(2 * size + 1024)
    results = [joiner.add(p) for p in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == frame
    assert decode_frame(frame).payload == b"x" * size
    assert joiner.pending == 0 and joiner.dropped == 0


def test_pieces_use_a_smaller_limit_too() -> None:
    frame = frame_of(1000)
    pieces = split_frame(frame, limit=100)
    assert all(len(p) <= 100 for p in pieces)
    joiner = Reassembler(10_000)
    out = [joiner.add(p) for p in pieces]
    assert out[-1] == frame
    assert joiner.pending == 0


def test_a_limit_with_no_room_after_the_topic_is_refused() -> None:
    with pytest.raises(ProtocolError, match="no room"):
        split_frame(frame_of(100, channel="c" * 60), limit=70)


def test_a_lost_piece_drops_its_frame_and_the_next_one_still_arrives() -> None:
    first, second = split_frame(frame_of(60_000, seq=1)), split_frame(frame_of(60_000, seq=2))
    joiner = Reassembler(1 << 20)
    assert joiner.add(first[0]) is None
    assert joiner.pending > 0
    # first[1:] lost (a full pipe): the next frame's first piece starts afresh.
    assert [joiner.add(p) for p in second][-1] == frame_of(60_000, seq=2)
    assert joiner.dropped == 1


def test_the_rest_of_a_frame_whose_start_was_lost_is_ignored() -> None:
    pieces = split_frame(frame_of(60_000))
    joiner = Reassembler(1 << 20)
    assert all(joiner.add(p) is None for p in pieces[1:])
    assert joiner.dropped == 0  # nothing was held
    assert [joiner.add(p) for p in pieces][-1] == frame_of(60_000)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: piece(b"other", 1, 3, b"b"),  # another topic
        lambda p: piece(b"big", 1, 4, b"b"),  # another count
        lambda p: piece(b"big", 2, 3, b"b"),  # skipped a piece
    ],
)
def test_a_piece_that_does_not_continue_the_frame_drops_it(change: object) -> None:
    joiner = Reassembler(1 << 20)
    assert joiner.add(piece(b"big", 0, 3, b"a")) is None
    assert joiner.add(change(None)) is None  # type: ignore[operator]
    assert joiner.dropped == 1 and joiner.pending == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"big\0" + b"\xc1\x00", "too short"),
        (piece(b"big", 0, 1, b"a"), "numbered 0 of 1"),
        (piece(b"big", 3, 3, b"a"), "numbered 3 of 3"),
        (piece(b"big", 0, 3, b"a", mark=1), "numbered 0 of 3"),
    ],
)
def test_a_malformed_piece_is_refused_and_drops_what_was_held(bad: bytes, message: str) -> None:
    joiner = Reassembler(1 << 20)
    joiner.add(piece(b"big", 0, 3, b"a"))
    with pytest.raises(ProtocolError, match=message):
        joiner.add(bad)
    assert joiner.dropped == 1 and joiner.pending == 0


def test_a_piece_without_a_topic_is_refused() -> None:
    with pytest.raises(ProtocolError, match="no topic"):
        Reassembler(100).add(b"no nul here")


def test_pieces_past_the_byte_limit_are_refused() -> None:
    joiner = Reassembler(10)
    joiner.add(piece(b"big", 0, 3, b"a" * 6))
    with pytest.raises(ProtocolError, match="more than 10 bytes"):
        joiner.add(piece(b"big", 1, 3, b"a" * 6))
    assert joiner.dropped == 1 and joiner.pending == 0


def test_pieces_that_join_into_another_piece_are_refused() -> None:
    joiner = Reassembler(1 << 20)
    joiner.add(piece(b"big", 0, 2, bytes([CHUNK_MARK])))
    with pytest.raises(ProtocolError, match="join into another piece"):
        joiner.add(piece(b"big", 1, 2, PIECE.pack(0, 0, 0)[1:] + b"x"))
    assert joiner.dropped == 1


def test_empty_pieces_join_into_a_bare_topic() -> None:
    joiner = Reassembler(100)
    joiner.add(piece(b"big", 0, 2, b""))
    assert joiner.add(piece(b"big", 1, 2, b"")) == b"big\0"


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"big\0\xc1rest", True),
        (b"big\0\x01rest", False),
        (b"big\0", False),
        (b"\0\xc1", False),
        (b"nonul", False),
    ],
)
def test_is_piece(frame: bytes, expected: bool) -> None:
    assert is_piece(frame) is expected
