"""The bridge's memory of relayed sequence numbers: resends are dropped, nothing new is."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circus_events.protocol.relayed import MAX_RUNS, Relayed


def test_frames_in_order_are_relayed_and_a_resend_of_any_of_them_is_not() -> None:
    relayed = Relayed()
    assert all(relayed.first_time("w", "c", 1, seq, 1) for seq in range(1, 11))
    assert relayed.first_time("w", "c", 1, 11, 5)  # a batch of 5: 11..15
    assert not relayed.first_time("w", "c", 1, 3, 1)
    assert not relayed.first_time("w", "c", 1, 11, 5)
    assert relayed.first_time("w", "c", 1, 16, 1)


def test_keys_workers_and_epochs_are_apart() -> None:
    relayed = Relayed()
    relayed.first_time("w", "c", 1, 1, 1)
    assert relayed.first_time("w", "other", 1, 1, 1)
    assert relayed.first_time("v", "c", 1, 1, 1)
    assert relayed.first_time("w", "c", 2, 1, 1)  # the worker's numbering restarted
    assert not relayed.first_time("w", "c", 2, 1, 1)
    assert relayed.first_time("w", "c", 1, 1, 1)  # an older epoch: cannot tell, relayed
    assert len(relayed) == 3


def test_a_frame_lost_before_newer_ones_fills_its_hole_when_resent() -> None:
    relayed = Relayed()
    for seq in (1, 2, 3, 5, 6):  # 4 was lost with a broken connection
        assert relayed.first_time("w", "c", 1, seq, 1)
    assert relayed.first_time("w", "c", 1, 4, 1)
    assert not any(relayed.first_time("w", "c", 1, seq, 1) for seq in range(1, 7))
    assert relayed._keys[("w", "c")] == [1, 1, 6]


def test_a_partly_new_frame_is_relayed() -> None:
    relayed = Relayed()
    relayed.first_time("w", "c", 1, 1, 3)
    relayed.first_time("w", "c", 1, 10, 1)
    assert relayed.first_time("w", "c", 1, 2, 5)  # 4..6 are new
    assert relayed._keys[("w", "c")] == [1, 1, 6, 10, 10]


def test_too_many_holes_forget_the_lowest_run() -> None:
    relayed = Relayed()
    for n in range(MAX_RUNS + 1):
        relayed.first_time("w", "c", 1, 10 * n, 1)
    assert relayed.first_time("w", "c", 1, 0, 1)  # forgotten: relayed again
    assert not relayed.first_time("w", "c", 1, 10 * MAX_RUNS, 1)


def test_past_max_keys_the_oldest_key_is_forgotten() -> None:
    relayed = Relayed(max_keys=2)
    for key in ("a", "b", "c"):
        relayed.first_time("w", key, 1, 1, 1)
    assert len(relayed) == 2
    assert relayed.first_time("w", "a", 1, 1, 1)
    assert not relayed.first_time("w", "c", 1, 1, 1)
    with pytest.raises(ValueError, match="max_keys"):
        Relayed(max_keys=0)


frames = st.lists(st.tuples(st.integers(1, 2), st.integers(1, 60), st.integers(1, 4)), max_size=80)


@given(frames)
def test_nothing_new_is_ever_dropped(sent: list[tuple[int, int, int]]) -> None:
    relayed = Relayed()
    seen: dict[int, set[int]] = {}  # epoch -> numbers relayed
    newest = 0
    for epoch, first, count in sent:
        numbers = set(range(first, first + count))
        newest = max(newest, epoch)
        if not relayed.first_time("w", "c", epoch, first, count):
            assert epoch == newest and numbers <= seen.get(epoch, set())
        seen.setdefault(epoch, set()).update(numbers)


@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.data())
def test_every_resend_of_frames_sent_in_order_is_dropped(
    sizes: list[int], data: st.DataObject
) -> None:
    relayed = Relayed()
    runs, first = [], 1
    for size in sizes:
        assert relayed.first_time("w", "c", 7, first, size)
        runs.append((first, size))
        first += size
    for start, size in data.draw(st.lists(st.sampled_from(runs), max_size=20)):
        assert not relayed.first_time("w", "c", 7, start, size)


def test_a_forgotten_key_relays_a_resend_again() -> None:
    relayed = Relayed()
    relayed.first_time("w", "c", 1, 1, 5)
    relayed.forget("w", "c")
    relayed.forget("w", "never")
    assert relayed.first_time("w", "c", 1, 1, 5)
    assert not relayed.first_time("w", "c", 1, 1, 5)
