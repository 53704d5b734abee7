"""Gap and duplicate detection per (origin, channel), against a table and a model."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circus_events.protocol.sequence import (
    DEFAULT_MAX_KEYS,
    DUPLICATE,
    WINDOW,
    ChannelNumbers,
    SequenceTracker,
)

D = DUPLICATE

# (name, [(epoch, seq), ...] on one key, results, (gaps, missed, duplicates, late))
SEQUENCES: list[tuple[str, list[tuple[int, int]], list[int], tuple[int, int, int, int]]] = [
    ("in order", [(1, 0), (1, 1), (1, 2)], [0, 0, 0], (0, 0, 0, 0)),
    ("first is never a gap", [(1, 500)], [0], (0, 0, 0, 0)),
    ("gap", [(1, 1), (1, 5)], [0, 3], (1, 3, 0, 0)),
    ("two gaps", [(1, 1), (1, 3), (1, 6)], [0, 1, 2], (2, 3, 0, 0)),
    ("duplicate", [(1, 1), (1, 1)], [0, D], (0, 0, 1, 0)),
    ("late then duplicate", [(1, 1), (1, 4), (1, 2), (1, 2)], [0, 2, 0, D], (1, 2, 1, 1)),
    ("late older than the first", [(1, 10), (1, 9)], [0, 0], (0, 0, 0, 1)),
    ("oldest in the window", [(1, 100), (1, 100 - WINDOW + 1)], [0, 0], (0, 0, 0, 1)),
    ("just out of the window", [(1, 100), (1, 100 - WINDOW)], [0, D], (0, 0, 1, 0)),
    ("jump of WINDOW-1 keeps the old bit", [(1, 1), (1, WINDOW), (1, 1)], [0, WINDOW - 2, D],
     (1, WINDOW - 2, 1, 0)),
    ("jump of WINDOW-1, unseen", [(1, 2), (1, WINDOW + 1), (1, 3)], [0, WINDOW - 2, 0],
     (1, WINDOW - 2, 0, 1)),
    ("jump of WINDOW", [(1, 0), (1, WINDOW), (1, 0)], [0, WINDOW - 1, D], (1, WINDOW - 1, 1, 0)),
    ("jump past the window", [(1, 0), (1, 1000), (1, 999), (1, 999)], [0, 999, 0, D],
     (1, 999, 1, 1)),
    ("restart: newer epoch", [(1, 5), (2, 0), (2, 1)], [0, 0, 0], (0, 0, 0, 0)),
    ("restart with a high seq", [(1, 5), (2, 50)], [0, 0], (0, 0, 0, 0)),
    ("replay from an older epoch", [(2, 5), (1, 6), (1, 5)], [0, D, D], (0, 0, 2, 0)),
    ("epoch bump forgets the window", [(1, 5), (2, 5), (2, 5)], [0, 0, D], (0, 0, 1, 0)),
    ("huge numbers", [(2**64 - 1, 2**64 - 3), (2**64 - 1, 2**64 - 1)], [0, 1], (1, 1, 0, 0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("observations", "results", "counters"),
    [case[1:] for case in SEQUENCES],
    ids=[case[0] for case in SEQUENCES],
)
def test_sequences(
    observations: list[tuple[int, int]], results: list[int], counters: tuple[int, int, int, int]
) -> None:
    tracker = SequenceTracker()
    assert [tracker.observe("w1", "c", epoch, seq) for epoch, seq in observations] == results
    assert (tracker.gaps, tracker.missed, tracker.duplicates, tracker.late) == counters
    assert len(tracker) == 1


def test_keys_are_independent() -> None:
    tracker = SequenceTracker()
    assert tracker.observe("w1", "a", 1, 10) == 0
    assert tracker.observe("w1", "b", 1, 20) == 0  # another channel: its own numbering
    assert tracker.observe("w2", "a", 1, 30) == 0  # another origin
    assert tracker.observe("w1", "a", 1, 11) == 0
    assert tracker.observe("w1", "b", 1, 20) == DUPLICATE
    assert tracker.observe("w2", "a", 2, 0) == 0
    assert len(tracker) == 3


def test_forget() -> None:
    tracker = SequenceTracker()
    for origin, channel in [("w1", "a"), ("w1", "b"), ("w2", "a")]:
        tracker.observe(origin, channel, 1, 5)
    tracker.forget("w1")
    assert len(tracker) == 1
    assert tracker.observe("w1", "a", 1, 5) == 0  # new again, not a duplicate
    assert tracker.observe("w2", "a", 1, 5) == DUPLICATE
    tracker.forget("nobody")
    assert len(tracker) == 2


def test_max_keys_forgets_the_oldest() -> None:
    tracker = SequenceTracker(max_keys=2)
    tracker.observe("w1", "a", 1, 1)
    tracker.observe("w1", "b", 1, 1)
    tracker.observe("w1", "b", 2, 1)  # a known key, even with a new epoch: nothing forgotten
    assert len(tracker) == 2
    tracker.observe("w1", "c", 1, 1)  # "a" is forgotten
    assert len(tracker) == 2
    assert tracker.observe("w1", "b", 2, 1) == DUPLICATE
    assert tracker.observe("w1", "c", 1, 1) == DUPLICATE
    assert tracker.observe("w1", "a", 1, 1) == 0  # treated as new: no duplicate, no gap
    assert len(tracker) == 2


def test_max_keys_at_the_limit() -> None:
    tracker = SequenceTracker()
    for i in range(DEFAULT_MAX_KEYS + 1):
        tracker.observe("w", str(i), 1, 1)
    assert len(tracker) == DEFAULT_MAX_KEYS
    assert tracker.observe("w", "0", 1, 1) == 0  # the first key was forgotten

    tracker = SequenceTracker(max_keys=1)
    tracker.observe("w1", "a", 1, 1)
    tracker.observe("w1", "b", 1, 1)
    assert len(tracker) == 1


@pytest.mark.parametrize("max_keys", [0, -1])
def test_max_keys_must_be_positive(max_keys: int) -> None:
    with pytest.raises(ValueError, match="max_keys must be at least 1"):
        SequenceTracker(max_keys)


# ---------------------------------------------------------------------------
# Against a reference model
# ---------------------------------------------------------------------------


@dataclass
class Stream:
    epoch: int
    highest: int
    seen: set[int] = field(default_factory=set)


@dataclass
class Model:
    """The documented rules, written the obvious way: a set of seen numbers."""

    max_keys: int
    streams: dict[tuple[str, str], Stream] = field(default_factory=dict)
    gaps: int = 0
    missed: int = 0
    duplicates: int = 0
    late: int = 0

    def observe(self, key: tuple[str, str], epoch: int, seq: int) -> int:
        stream = self.streams.get(key)
        if stream is None or epoch > stream.epoch:
            if stream is None and len(self.streams) >= self.max_keys:
                del self.streams[next(iter(self.streams))]  # oldest first
            self.streams[key] = Stream(epoch, seq, {seq})
            return 0
        if epoch < stream.epoch:
            self.duplicates += 1
            return DUPLICATE
        if seq > stream.highest:
            missed = seq - stream.highest - 1
            stream.highest = seq
            stream.seen = {s for s in stream.seen if seq - s < WINDOW} | {seq}
            if missed:
                self.gaps += 1
                self.missed += missed
            return missed
        if stream.highest - seq >= WINDOW or seq in stream.seen:
            self.duplicates += 1
            return DUPLICATE
        stream.seen.add(seq)
        self.late += 1
        return 0


KEYS = [("w1", "a"), ("w1", "b"), ("w2", "a")]

observations = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.integers(0, 2),  # epoch
        st.one_of(st.integers(0, 150), st.integers(0, 2**64 - 1)),  # seq
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(observations, st.integers(1, 4))
def test_matches_model(steps: list[tuple[tuple[str, str], int, int]], max_keys: int) -> None:
    tracker = SequenceTracker(max_keys)
    model = Model(max_keys)
    for key, epoch, seq in steps:
        assert tracker.observe(*key, epoch, seq) == model.observe(key, epoch, seq)
        assert len(tracker) == len(model.streams)
    assert (tracker.gaps, tracker.missed, tracker.duplicates, tracker.late) == (
        model.gaps,
        model.missed,
        model.duplicates,
        model.late,
    )


@st.composite
def delivered(draw: st.DrawFn) -> tuple[list[int], set[int]]:
    """One stream as a receiver sees it: 0..n-1, some lost, some repeated, locally reordered."""
    n = draw(st.integers(1, 200))
    lost = draw(st.sets(st.integers(1, n - 1), max_size=n // 2)) if n > 1 else set()
    replayed = draw(st.sets(st.integers(0, n - 1), max_size=n // 5))
    out: list[int] = []
    for s in range(n):
        if s not in lost:
            out.extend([s, s] if s in replayed else [s])
    swapped = draw(st.sets(st.integers(0, max(len(out) - 2, 0)), max_size=len(out) // 5))
    for i in sorted(swapped):
        if i - 1 not in swapped and i + 1 < len(out):  # no number moves twice
            out[i], out[i + 1] = out[i + 1], out[i]
    return out, lost


@settings(max_examples=200, deadline=None)
@given(delivered())
def test_each_message_delivered_once(case: tuple[list[int], set[int]]) -> None:
    arrivals, lost = case
    tracker = SequenceTracker()
    accepted = [s for s in arrivals if tracker.observe("w", "c", 1, s) != DUPLICATE]
    # With reordering only between neighbours, everything sent arrives exactly once
    # (the first arrival may be 1 when 0 and 1 swapped: 0 then counts as late).
    assert sorted(accepted) == sorted(set(arrivals))
    assert tracker.duplicates == len(arrivals) - len(accepted)
    if arrivals[0] == 0:
        assert tracker.missed - tracker.late == len(lost & set(range(max(arrivals))))


def test_observe_without_counting_records_but_leaves_the_counters() -> None:
    tracker = SequenceTracker()
    tracker.observe("o", "c", 1, 1)
    assert tracker.observe("o", "c", 1, 5, count=False) == 3
    assert (tracker.gaps, tracker.missed, tracker.duplicates, tracker.late) == (0, 0, 0, 0)
    assert tracker.observe("o", "c", 1, 5) == DUPLICATE
    assert tracker.duplicates == 1


def test_a_run_that_follows_is_recorded_at_once() -> None:
    tracker = SequenceTracker()
    assert tracker.observe("w", "c", 1, 1) == 0
    assert tracker.observe_run("w", "c", 1, 2, 3) is None
    assert tracker.observe("w", "c", 1, 5) == 0
    assert tracker.observe("w", "c", 1, 3) == DUPLICATE  # inside the recorded run
    assert tracker.observe_run("w", "c", 1, 6, 100) is None  # longer than the window
    assert tracker.observe("w", "c", 1, 105) == DUPLICATE
    assert tracker.observe("w", "c", 1, 106) == 0
    assert (tracker.gaps, tracker.missed) == (0, 0)


def test_a_run_that_does_not_follow_is_judged_one_by_one() -> None:
    tracker = SequenceTracker()
    assert tracker.observe_run("w", "c", 1, 10, 3) == [0, 0, 0]  # first sight
    assert tracker.observe_run("w", "c", 1, 11, 4) == [DUPLICATE, DUPLICATE, 0, 0]
    assert tracker.observe_run("w", "c", 1, 20, 2) == [5, 0]
    assert tracker.observe_run("w", "c", 2, 1, 2) == [0, 0]  # restarted origin
    assert tracker.observe_run("w", "c", 1, 22, 2) == [DUPLICATE, DUPLICATE]
    assert (tracker.gaps, tracker.missed, tracker.duplicates) == (1, 5, 4)


def test_channel_numbers_count_per_channel_and_start_again_under_a_new_epoch() -> None:
    numbers = ChannelNumbers(epoch=100, max_channels=2)
    assert [numbers.next("a"), numbers.next("a"), numbers.next("b")] == [
        (100, 1), (100, 2), (100, 1)
    ]  # fmt: skip
    assert numbers.next("b") == (100, 2) and len(numbers) == 2
    # A third name: every name forgotten, numbered again under the next epoch.
    assert numbers.next("c") == (101, 1) and len(numbers) == 1
    assert numbers.next("a") == (101, 1)
    # A receiver takes the new epoch as a restart: no gap, no duplicate.
    tracker = SequenceTracker()
    for epoch, seq in [(100, 1), (100, 2), (101, 1), (101, 2)]:
        assert tracker.observe("bridge", "a", epoch, seq) != DUPLICATE
    assert tracker.gaps == 0
