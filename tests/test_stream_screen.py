"""Stream mode's read command and the switch to the screen (no Redis: bytes only)."""

from __future__ import annotations

import hiredis

from circus_events._config import FRAME_SLACK
from circus_events.bridge.stream_screen import SCREEN_SCRIPT, ReadCommand

KEYS = [b"ns:@stream:0", b"ns:@stream:1"]


def parse(command: bytes) -> list[bytes]:
    """A RESP command (an array of bulk strings) back into its arguments."""
    reader = hiredis.Reader()
    reader.feed(command)
    args = reader.gets()
    assert isinstance(args, list) and reader.gets() is False
    return args


def test_reads_are_xread_from_the_cursors() -> None:
    reads = ReadCommand(KEYS, 63, 1000, 1024 * 1024)
    assert parse(reads.command([b"5-1", b"0-0"])) == [
        b"XREAD", b"COUNT", b"63", b"BLOCK", b"1000", b"STREAMS", *KEYS, b"5-1", b"0-0",
    ]  # fmt: skip


def test_a_value_arriving_past_the_limit_makes_the_next_read_the_screen_once() -> None:
    reads = ReadCommand(KEYS, 63, 1000, 1024 * 1024)
    assert reads.limit > 1024 * 1024 + FRAME_SLACK  # room for every value a bridge writes
    reader = hiredis.Reader()
    reader.feed(b"*1\r\n$%d\r\n" % (10 * reads.limit) + bytes(reads.limit - 100))
    assert reader.gets() is False and not reads.oversized(reader)  # not past it yet
    reader.feed(bytes(200))
    assert reads.oversized(reader) and not reads.oversized(reader)  # counted once
    assert reads.screened == 1
    screen = parse(reads.command([b"5-1", b"7-18446744073709551615"]))
    assert screen[:4] == [b"EVAL", SCREEN_SCRIPT.encode(), b"2", *KEYS[:1]]
    # From the first id after each cursor, the same count, the same limit.
    assert screen[5:] == [b"63", b"%d" % reads.limit, b"5-2", b"8-0"]
    assert parse(reads.command([b"5-1", b"0-0"]))[0] == b"XREAD"  # then back to XREAD


def test_a_refused_screen_makes_the_next_read_whole_once() -> None:
    reads = ReadCommand(KEYS, 63, 1000, 1024 * 1024)
    big = hiredis.Reader()
    big.feed(b"*1\r\n$%d\r\n" % (10 * reads.limit) + bytes(reads.limit + 1))
    reads.refused()  # an XREAD refused: nothing changes
    assert reads.oversized(big)
    assert parse(reads.command([b"1-0", b"1-0"]))[0] == b"EVAL"
    reads.refused()  # Redis refuses scripts
    assert parse(reads.command([b"1-0", b"1-0"]))[0] == b"XREAD"
    assert not reads.oversized(big)  # this one is read whole
    parse(reads.command([b"1-0", b"1-0"]))
    assert reads.oversized(big)  # and the next is watched again
