"""Backpressure bookkeeping: markers, acks, who is behind, who is stuck (sans-IO)."""

from __future__ import annotations

import pytest

from circus_events._exceptions import ProtocolError
from circus_events.protocol.pacing import (
    MAX_PACE_KEY,
    PACE_ACK,
    PACE_TOPIC,
    PaceTable,
    build_pace_ack,
    build_pace_marker,
    parse_pace_ack,
    parse_pace_marker,
)

MiB = 1024 * 1024


@pytest.mark.parametrize("clock", [0, 1, 2**40, 2**64 - 1])
def test_markers_and_acks_round_trip(clock: int) -> None:
    marker = build_pace_marker(clock)
    assert marker.startswith(PACE_TOPIC)
    assert parse_pace_marker(marker) == clock
    assert parse_pace_ack(build_pace_ack(clock, b"worker\0\1")) == (clock, b"worker\0\1")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        PACE_TOPIC,
        build_pace_marker(5)[:-1],
        build_pace_marker(5) + b"x",
        b"@pacx\0" + build_pace_marker(5)[6:],
        PACE_TOPIC + b"\x01" + bytes(8),  # a frame's version byte, not the mark
    ],
)
def test_anything_else_is_not_a_marker(frame: bytes) -> None:
    assert parse_pace_marker(frame) is None


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        PACE_ACK,
        PACE_ACK + bytes(8),  # no key
        b"\x02" + bytes(8) + b"k",
        PACE_ACK + bytes(8) + b"k" * (MAX_PACE_KEY + 1),
    ],
)
def test_malformed_acks_are_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_pace_ack(frame)
    table = PaceTable(8 * MiB, 1.0)
    with pytest.raises(ProtocolError):
        table.ack(frame, 0.0)
    assert len(table) == 0


def send(table: PaceTable, nbytes: int, now: float) -> int:
    """What the bridge does: count bytes, mark when due; the clock of the last marker."""
    table.clock += nbytes
    assert table.clock >= table.next_mark
    marker = table.mark(now)
    clock = parse_pace_marker(marker)
    assert clock == table.clock
    return clock


def test_no_subscriber_no_pause() -> None:
    table = PaceTable(8 * MiB, 1.0)
    assert table.mark_every == MiB
    send(table, 100 * MiB, 0.0)
    assert not table.evaluate(0.0)
    assert table.status()["paused"] is False


def test_a_live_subscriber_far_behind_holds_publishers_until_half_caught_up() -> None:
    table = PaceTable(8 * MiB, 1.0)
    first = send(table, MiB, 0.0)
    table.ack(build_pace_ack(first, b"a"), 0.0)
    table.ack(build_pace_ack(first, b"b"), 0.0)
    send(table, 8 * MiB, 0.1)  # 8 MiB behind: not more than the threshold yet
    assert not table.evaluate(0.1)
    later = send(table, MiB, 0.2)
    assert table.evaluate(0.2) and table.paused
    assert table.pauses == 1
    table.ack(build_pace_ack(later, b"b"), 0.3)  # b caught up, a still 9 MiB behind
    assert table.evaluate(0.3)
    table.ack(build_pace_ack(later - 5 * MiB, b"a"), 0.4)  # 5 MiB: above half of 8
    assert table.evaluate(0.4)
    table.ack(build_pace_ack(later - 4 * MiB, b"a"), 0.5)  # within half
    assert not table.evaluate(0.5)
    assert table.pauses == 1 and table.stalls == 0
    assert table.status() == {
        "pace_bytes": 8 * MiB,
        "stall_timeout": 1.0,
        "paused": False,
        "pauses": 1,
        "subscribers": 2,
        "stuck": 0,
        "stalls": 0,
        "sent_bytes": 10 * MiB,
    }


def test_a_subscriber_without_progress_for_the_stall_timeout_is_stuck_and_paces_nobody() -> None:
    table = PaceTable(8 * MiB, 1.0)
    first = send(table, MiB, 0.0)
    table.ack(build_pace_ack(first, b"stuck"), 0.0)
    table.ack(build_pace_ack(first, b"ok"), 0.0)
    for n in range(1, 10):
        clock = send(table, MiB, n * 0.1)
        table.ack(build_pace_ack(clock, b"ok"), n * 0.1)
    assert table.evaluate(0.95)  # 9 MiB behind, silent for less than a second
    assert table.stuck == 0
    assert not table.evaluate(1.2)  # silent for 1.2 s, a marker of 0.1 s unread
    assert table.stuck == 1 and table.stalls == 1
    assert not table.evaluate(1.3)
    assert table.stalls == 1  # counted once per stall
    # It wakes up and reads: it paces again.
    table.ack(build_pace_ack(first + MiB // 2, b"stuck"), 1.4)  # 8.5 MiB behind
    assert table.evaluate(1.4)
    assert table.stuck == 0


def test_an_idle_subscriber_is_not_stuck_when_a_burst_begins() -> None:
    table = PaceTable(8 * MiB, 1.0)
    first = send(table, MiB, 0.0)
    table.ack(build_pace_ack(first, b"idle"), 0.0)  # then nothing to read for a minute
    burst = send(table, 10 * MiB, 50.0)
    assert table.evaluate(50.0)  # far behind, but it has had no time to read: it paces
    assert table.evaluate(50.5)
    assert table.stuck == 0
    assert not table.evaluate(51.1)  # a second on, still nothing read: stuck
    assert table.stuck == 1
    table.ack(build_pace_ack(burst, b"idle"), 51.2)
    assert not table.evaluate(51.2)
    assert table.stuck == 0


def test_slow_progress_is_progress() -> None:
    table = PaceTable(8 * MiB, 1.0)
    table.ack(build_pace_ack(0, b"slow"), 0.0)
    clock = send(table, 20 * MiB, 0.0)
    read = 0
    for n in range(1, 30):  # it reads a marker every 0.5 s: never stuck
        read += 1
        table.ack(build_pace_ack(read, b"slow"), n * 0.5)
        assert table.evaluate(n * 0.5)
    assert table.stuck == 0
    table.ack(build_pace_ack(read, b"slow"), 20.0)  # the same ack again: not progress
    assert not table.evaluate(20.0)
    assert table.stuck == 1
    assert clock == 20 * MiB


def test_an_ack_from_the_future_counts_as_caught_up() -> None:
    table = PaceTable(8 * MiB, 1.0)
    send(table, 10 * MiB, 0.0)
    table.ack(build_pace_ack(2**63, b"liar"), 0.0)
    assert not table.evaluate(0.0)


def test_a_new_table_pauses_on_the_first_acks_threshold() -> None:
    # A subscriber first heard of far behind paces at once (no stale marker yet).
    table = PaceTable(8 * MiB, 1.0)
    table.clock = 9 * MiB
    table.ack(build_pace_ack(0, b"late"), 0.0)
    assert table.evaluate(0.0)


def test_the_table_is_bounded_and_forgets_silent_sockets() -> None:
    table = PaceTable(8 * MiB, 1.0, max_peers=2, forget_after=10.0)
    table.ack(build_pace_ack(0, b"a"), 0.0)
    table.ack(build_pace_ack(0, b"b"), 5.0)
    table.ack(build_pace_ack(0, b"c"), 6.0)  # full, nobody silent long enough
    assert len(table) == 2 and table.ignored == 1
    table.ack(build_pace_ack(0, b"c"), 11.0)  # a has been silent for 11 s: it goes
    assert len(table) == 2 and table.ignored == 1
    table.clock = 100 * MiB
    assert table.evaluate(11.5)  # b and c are behind, a is gone
    assert not table.evaluate(30.0)  # all silent past forget_after: forgotten
    assert len(table) == 0


def test_the_stale_marker_window_stays_small() -> None:
    table = PaceTable(8 * MiB, 1.0)
    for n in range(1000):
        send(table, MiB, n * 0.01)
        table.evaluate(n * 0.01)
    assert len(table._marks) <= 102
