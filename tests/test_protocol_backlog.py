"""What stuck local subscribers hold, all together, and whom to cut (sans-IO)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from circus_events.protocol import MIN_LOOK_EVERY, Backlog

MiB = 1024 * 1024


def test_a_subscriber_that_reads_is_never_charged() -> None:
    backlog: Backlog[str] = Backlog(budget=10 * MiB, per_peer=100 * MiB)
    backlog.joined("reader")
    backlog.clock += 50 * MiB
    backlog.looked("reader", True)  # writable: libzmq queues nothing for it
    assert backlog.charge("reader") == 0
    backlog.clock += 50 * MiB
    backlog.looked("reader", True)
    assert backlog.charge("reader") == 0
    assert backlog.to_cut() == []


def test_a_subscriber_that_stops_reading_is_charged_what_was_sent_since() -> None:
    backlog: Backlog[str] = Backlog(budget=1000 * MiB, per_peer=100 * MiB)
    backlog.joined("stuck")
    backlog.clock += 5 * MiB
    backlog.looked("stuck", False)  # full: libzmq may hold all sent since it joined
    assert backlog.charge("stuck") == 5 * MiB
    backlog.clock += 5 * MiB
    backlog.looked("stuck", False)
    assert backlog.charge("stuck") == 10 * MiB
    backlog.clock += 500 * MiB
    assert backlog.charge("stuck") == 100 * MiB  # never more than its own queue's bound
    assert backlog.charged == 100 * MiB


def test_a_pace_ack_says_up_to_where_it_read() -> None:
    backlog: Backlog[str] = Backlog(budget=1000 * MiB, per_peer=100 * MiB)
    backlog.joined("busy")
    backlog.clock += 10 * MiB
    backlog.looked("busy", False)  # its socket full at the look: busy, or stuck
    backlog.acked("busy", 8 * MiB)  # it read all sent before the marker at 8 MiB
    assert backlog.charge("busy") == 2 * MiB
    backlog.acked("busy", 4 * MiB)  # an older ack, late: no news
    backlog.acked("busy", 50 * MiB)  # never past what was sent
    backlog.acked("unknown", 8 * MiB)
    assert backlog.charge("busy") == 0


def test_a_frame_held_by_many_is_charged_once() -> None:
    backlog: Backlog[str] = Backlog(budget=1000 * MiB, per_peer=100 * MiB)
    for peer in ("a", "b", "c"):
        backlog.joined(peer)
    backlog.clock += 10 * MiB
    backlog.looked("c", True)  # read it all
    backlog.clock += 10 * MiB
    for peer in ("a", "b", "c"):
        backlog.looked(peer, False)
    # a and b hold the same 20 MiB, c the last 10 of them: libzmq keeps one copy.
    assert [backlog.charge(p) for p in ("a", "b", "c")] == [20 * MiB, 20 * MiB, 10 * MiB]
    assert backlog.charged == 20 * MiB
    backlog.clock += 500 * MiB
    # Each queue stops at per_peer: a and b hold [0, 100], c [10, 110].
    assert backlog.charged == 110 * MiB


def test_past_the_budget_the_one_behind_longest_goes_first_and_only_what_is_needed() -> None:
    backlog: Backlog[str] = Backlog(budget=15 * MiB, per_peer=100 * MiB)
    for peer in ("early", "late", "reader"):
        backlog.joined(peer)
    backlog.clock += 10 * MiB
    backlog.looked("early", False)
    backlog.looked("late", True)
    backlog.looked("reader", True)
    assert backlog.to_cut() == []  # 10 MiB charged: within the budget
    backlog.clock += 10 * MiB
    for peer in ("early", "late"):
        backlog.looked(peer, False)
    backlog.looked("reader", True)
    assert backlog.charged == 20 * MiB  # early's 20 hold late's 10
    assert backlog.to_cut() == []  # over at one look: a second one first
    assert backlog.over
    backlog.plan()
    assert backlog.next_look > 2**60  # the caller looks again by the wall clock
    backlog.looked("reader", True)  # still over at the second look
    assert backlog.to_cut() == [("early", 20 * MiB)]
    assert len(backlog) == 2 and backlog.charged == 10 * MiB
    backlog.left("late")  # closed: libzmq freed it
    backlog.left("never-known")
    assert backlog.charged == 0 and len(backlog) == 1


def test_a_busy_subscriber_seen_reading_at_the_second_look_is_kept() -> None:
    backlog: Backlog[str] = Backlog(budget=5 * MiB, per_peer=100 * MiB)
    backlog.joined("busy")
    backlog.clock += 10 * MiB
    backlog.looked("busy", False)  # caught with a full socket
    assert backlog.to_cut() == [] and backlog.over
    backlog.clock += MIN_LOOK_EVERY
    backlog.looked("busy", True)  # it was only busy
    assert backlog.to_cut() == [] and not backlog.over and len(backlog) == 1


def test_at_the_second_look_unsent_bytes_that_changed_mean_it_reads() -> None:
    backlog: Backlog[str] = Backlog(budget=5 * MiB, per_peer=100 * MiB)
    for peer in ("starved", "stopped"):
        backlog.joined(peer)
    backlog.clock += 10 * MiB
    for peer in ("starved", "stopped"):
        backlog.looked(peer, False, 60_000)  # both full at a look as bytes go out
    assert backlog.to_cut() == [] and backlog.over
    backlog.looked("starved", False, 59_000)  # 50 ms on: it read a little
    backlog.looked("stopped", False, 60_000)  # a stopped one's socket does not change
    assert backlog.charge("starved") == 0
    assert backlog.to_cut() == [("stopped", 10 * MiB)]
    backlog.clock += 10 * MiB
    backlog.looked("starved", False, 58_000)  # outside a second look, a change proves nothing
    assert backlog.charge("starved") == 10 * MiB


def test_those_sharing_the_oldest_frames_all_go() -> None:
    backlog: Backlog[int] = Backlog(budget=MiB, per_peer=100 * MiB)
    for peer in range(3):
        backlog.joined(peer)
    backlog.clock += 10 * MiB
    for peer in range(3):
        backlog.looked(peer, False)
    # Equally far behind: cutting one frees nothing while the others hold the
    # same frames, so all go, in the order they came.
    assert backlog.to_cut() == []
    assert backlog.to_cut() == [(0, 10 * MiB), (1, 10 * MiB), (2, 10 * MiB)]
    assert len(backlog) == 0


def test_a_connection_joins_once_with_nothing_charged() -> None:
    backlog: Backlog[str] = Backlog(budget=MiB, per_peer=100 * MiB)
    backlog.clock += 7 * MiB
    backlog.joined("a")
    backlog.looked("a", False)
    backlog.clock += MiB
    backlog.joined("a")  # subscribes again: still behind since before
    assert backlog.charge("a") == MiB


def test_the_next_look_comes_once_what_is_left_of_the_budget_is_sent() -> None:
    backlog: Backlog[int] = Backlog(budget=1024 * MiB, per_peer=100 * MiB)
    assert backlog.next_look == MIN_LOOK_EVERY
    for peer in range(8):
        backlog.joined(peer)
    backlog.clock += 64 * MiB
    backlog.looked(0, False)
    for peer in range(1, 8):
        backlog.looked(peer, True)
    backlog.plan()
    # Whoever stops reading, what they hold together grows by what is sent.
    assert backlog.next_look == backlog.clock + (1024 - 64) * MiB
    backlog.budget = 0
    backlog.plan()
    assert backlog.next_look == backlog.clock + MIN_LOOK_EVERY  # never every byte


def union(spans: list[tuple[int, int]]) -> int:
    """Bytes covered by the spans, counted by brute force over a coarse grid."""
    grid = 64 * 1024
    return grid * len({b for start, stop in spans for b in range(start // grid, stop // grid)})


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 128), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(16, 1024),
)
def test_after_two_looks_what_is_held_fits_and_every_cut_was_behind_longer(
    steps: list[tuple[int, int, bool]], budget_grid: int
) -> None:
    grid = 64 * 1024  # sizes on a grid, so that union() can count exactly
    budget, per_peer = budget_grid * grid, 256 * grid
    backlog: Backlog[int] = Backlog(budget=budget, per_peer=per_peer)
    read_at: dict[int, int] = {}
    for peer, sent, reads in steps:
        backlog.joined(peer)
        read_at.setdefault(peer, backlog.clock)
        backlog.clock += sent * grid
        backlog.looked(peer, reads)
        if reads:
            read_at[peer] = backlog.clock
        spans = [(r, min(r + per_peer, backlog.clock)) for r in read_at.values()]
        assert backlog.charged == union(spans)
        was_over = backlog.over
        cuts = backlog.to_cut()
        # Within the budget after a cut, or after a second look over it.
        assert backlog.charged <= budget or (not was_over and backlog.over and not cuts)
        cut = dict(cuts)
        kept = [read_at[p] for p in read_at if p not in cut]
        if cuts:  # no more than needed: keeping the last one cut would not fit
            last = read_at[cuts[-1][0]]
            spans = [(r, min(r + per_peer, backlog.clock)) for r in [*kept, last]]
            assert union(spans) > budget
        for gone, charge in cuts:
            assert charge == min(backlog.clock - read_at[gone], per_peer) > 0
            assert all(read_at[gone] <= other for other in kept)  # none kept was behind longer
            del read_at[gone]
