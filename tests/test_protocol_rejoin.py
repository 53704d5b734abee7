"""The rejoin hold's policy (sans-IO): when a starting bridge keeps frames, and when
it lets them out."""

from __future__ import annotations

import pytest

from circus_events.protocol.rejoin import REJOIN_MIN_WAIT, RejoinHold

BOUND = 100.0  # monotonic time of the bind
WALL = 1_000_000.0  # the same moment by the wall clock


def hold(*expected: str, max_wait: float = 5.0, max_bytes: int = 1000) -> RejoinHold:
    return RejoinHold(
        expected, bound_at=BOUND, bound_wall=WALL, max_wait=max_wait, max_bytes=max_bytes
    )


def test_off_when_max_wait_is_zero() -> None:
    h = hold("w1", max_wait=0)
    assert h.open and h.reason == "off"
    assert not h.keep(b"f", WALL - 10)
    assert h.due(BOUND + 100) is None
    assert h.next_check(BOUND) is None
    assert h.min_wait == 0


def test_no_list_and_no_backlog_opens_after_the_shortest_wait() -> None:
    h = hold()
    assert h.phase == "watching"
    assert not h.keep(b"new", WALL + 0.1)  # stamped after the bind: delivered now
    assert not h.keep(b"unknown", None)
    assert h.due(BOUND + 1.0) is None
    assert h.next_check(BOUND + 1.0) == BOUND + REJOIN_MIN_WAIT
    assert h.due(BOUND + REJOIN_MIN_WAIT) == "no backlog"
    assert h.release("no backlog", BOUND + REJOIN_MIN_WAIT) == []
    assert h.open and not h.keep(b"later", WALL - 5)


def test_a_backlog_frame_starts_the_hold_and_keeps_order() -> None:
    h = hold()
    assert h.keep(b"old", WALL - 3)
    assert h.phase == "holding"
    assert h.keep(b"new", WALL + 1)  # once holding, everything waits, in order
    assert h.status()["held_frames"] == 2 and h.bytes == 6
    assert h.due(BOUND + 1.0) is None
    assert h.due(BOUND + REJOIN_MIN_WAIT) == "reconnect window"
    assert h.release("reconnect window", BOUND + 1.6) == [b"old", b"new"]
    status = h.status()
    assert status["state"] == "open" and status["held_frames"] == 0
    assert status["held_total"] == 2 and status["released_after"] == 1.6


@pytest.mark.parametrize(
    ("arrivals", "now", "reason"),
    [
        ((), BOUND + 1.0, None),
        (("w1",), BOUND + 2.0, None),  # w2 still missing
        (("w1", "w2"), BOUND + 1.0, None),  # all back, shortest wait not over
        (("w1", "w2"), BOUND + REJOIN_MIN_WAIT, "workers back"),
        (("w1",), BOUND + 5.0, "rejoin_timeout"),
        (("w1", "stranger"), BOUND + 4.9, None),
    ],
)
def test_a_saved_list_holds_until_its_workers_are_back(
    arrivals: tuple[str, ...], now: float, reason: str | None
) -> None:
    h = hold("w1", "w2")
    assert h.phase == "holding" and h.expected == 2
    for worker in arrivals:
        h.arrived(worker)
    assert h.due(now) == reason


def test_next_check_moves_from_the_shortest_to_the_longest_wait() -> None:
    h = hold("w1")
    assert h.next_check(BOUND) == BOUND + REJOIN_MIN_WAIT
    assert h.next_check(BOUND + REJOIN_MIN_WAIT) == BOUND + 5.0


def test_the_byte_bound_lets_frames_out_early() -> None:
    h = hold("w1", max_bytes=10)
    assert h.keep(b"12345", None)
    assert h.due(BOUND) is None
    assert h.keep(b"67890", None)  # at the bound
    assert h.due(BOUND) == "hold_max_bytes"
    assert h.release("hold_max_bytes", BOUND) == [b"12345", b"67890"]
    assert h.due(BOUND + 10) is None and h.next_check(BOUND) is None


def test_shortest_wait_never_exceeds_the_timeout() -> None:
    h = hold("w1", max_wait=0.5)
    assert h.min_wait == 0.5
    h.arrived("w1")
    assert h.due(BOUND + 0.5) == "rejoin_timeout"
