"""Refused subscriptions that libzmq keeps, charged per connection (sans-IO)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from circus_events.protocol import HOLD_ENTRY_BYTES, REFUSED_HOLD_BUDGET, RefusedHolds


def cost(topic: bytes) -> int:
    return len(topic) + HOLD_ENTRY_BYTES


def test_a_topic_is_held_once_per_connection_as_libzmq_keeps_it() -> None:
    holds: RefusedHolds[str] = RefusedHolds(1000)
    holds.refused("a", b"x.1")
    holds.refused("a", b"x.1")  # sent again: libzmq stores one entry
    holds.refused("b", b"x.1")  # another connection: an entry of its own
    assert holds.held_by("a") == holds.held_by("b") == cost(b"x.1")
    assert holds.held_bytes == 2 * cost(b"x.1")
    assert len(holds) == 2 and sorted(holds.peers()) == ["a", "b"]


def test_an_unsubscribe_lets_go_once_and_only_what_was_held() -> None:
    holds: RefusedHolds[str] = RefusedHolds(1000)
    holds.refused("a", b"x.1")
    holds.refused("a", b"x.22")
    holds.cancelled("a", b"never")  # not held: nothing changes
    holds.cancelled("nobody", b"x.1")
    holds.cancelled("a", b"x.1")
    assert holds.held_by("a") == holds.held_bytes == cost(b"x.22")
    holds.cancelled("a", b"x.1")  # twice: already gone
    holds.cancelled("a", b"x.22")
    assert holds.held_bytes == 0 and holds.held_by("a") == 0 and len(holds) == 0


def test_forgetting_a_connection_frees_all_it_held() -> None:
    holds: RefusedHolds[str] = RefusedHolds(1000)
    holds.refused("a", b"x.1")
    holds.refused("a", b"x.2")
    holds.refused("b", b"y")
    assert holds.forget("a") == 2 * cost(b"x.1")
    assert holds.forget("a") == 0
    assert holds.held_bytes == cost(b"y") and holds.peers() == ["b"]


def test_past_the_budget_the_heaviest_holder_is_cut_first() -> None:
    holds: RefusedHolds[str] = RefusedHolds(4 * cost(b"t.000"))
    holds.refused("light", b"t.000")
    for topic in (b"t.001", b"t.002", b"t.004"):
        holds.refused("heavy", topic)
    assert holds.to_cut() is None  # at the budget exactly: nothing yet
    holds.refused("light", b"t.003")
    assert holds.to_cut() == "heavy"
    holds.forget("heavy")
    assert holds.to_cut() is None


def test_the_default_budget_leaves_room_for_thousands_of_refused_topics() -> None:
    holds: RefusedHolds[int] = RefusedHolds()
    assert holds.budget == REFUSED_HOLD_BUDGET
    for n in range(2000):
        holds.refused(n % 7, b"orders.paid.%06d" % n)
    assert holds.to_cut() is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["refuse", "cancel", "forget"]),
            st.integers(0, 3),
            st.binary(min_size=0, max_size=6),
        ),
        max_size=60,
    )
)
def test_the_accounting_matches_a_model_of_libzmq(ops: list[tuple[str, int, bytes]]) -> None:
    holds: RefusedHolds[int] = RefusedHolds(200)
    model: dict[int, set[bytes]] = {}
    for op, peer, topic in ops:
        if op == "refuse":
            holds.refused(peer, topic)
            model.setdefault(peer, set()).add(topic)
        elif op == "cancel":
            holds.cancelled(peer, topic)
            model.get(peer, set()).discard(topic)
        else:
            holds.forget(peer)
            model.pop(peer, None)
        sizes = {p: sum(map(cost, ts)) for p, ts in model.items() if ts}
        assert holds.held_bytes == sum(sizes.values())
        assert {p: holds.held_by(p) for p in holds.peers()} == sizes
        heaviest = holds.to_cut()
        if sum(sizes.values()) <= 200:
            assert heaviest is None
        else:
            assert heaviest is not None and sizes[heaviest] == max(sizes.values())
