"""Byte budgets by size class, the subscription caps, and control request checks."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circus_events._exceptions import ProtocolError
from circus_events.protocol import (
    MAX_CONTROL_DEPTH,
    MAX_CONTROL_REQUEST,
    MIN_FRAMES,
    InterestChange,
    InterestTable,
    SubscriptionRefused,
    SubscriptionTopic,
    hwm_for_bytes,
    min_budget,
    parse_control_request,
    worst_case,
)

MiB = 1024 * 1024

# -- byte budgets ------------------------------------------------------------------


def test_64_mib_allows_62_of_the_largest_frames() -> None:
    frame = MiB + 4096
    hwm = hwm_for_bytes(64 * MiB, frame, 20_000)
    assert hwm == 62
    assert worst_case(hwm, frame) <= 64 * MiB


def test_the_frame_limit_wins_when_it_is_lower() -> None:
    assert hwm_for_bytes(64 * MiB, 1024, 100) == 100
    assert worst_case(100, 1024) == 101 * 1024


def test_a_budget_must_allow_a_thousand_frames_or_the_frame_limit() -> None:
    assert min_budget(MiB, 20_000) == 1001 * MiB
    assert min_budget(MiB, 10) == 11 * MiB
    assert hwm_for_bytes(min_budget(MiB, 20_000), MiB, 20_000) == MIN_FRAMES


def test_the_mark_is_at_least_one() -> None:
    # libzmq reads 0 as "no limit".
    assert hwm_for_bytes(MiB, MiB, 20_000) == 1


@given(
    max_frame=st.integers(1, 8 * MiB),
    factor=st.integers(2, 10_000),
    frame_hwm=st.integers(1, 100_000),
)
def test_the_worst_case_stays_within_the_budget(
    max_frame: int, factor: int, frame_hwm: int
) -> None:
    budget = factor * max_frame
    hwm = hwm_for_bytes(budget, max_frame, frame_hwm)
    assert 1 <= hwm <= frame_hwm
    assert worst_case(hwm, max_frame) <= budget


# -- subscription caps ------------------------------------------------------------


def sub(topic: bytes) -> bytes:
    return b"\x01" + topic


def unsub(topic: bytes) -> bytes:
    return b"\x00" + topic


def test_new_topics_past_max_subscriptions_are_refused() -> None:
    table = InterestTable(max_subscriptions=2, max_patterns=2)
    assert table.feed(sub(b"a\0")) == InterestChange(SubscriptionTopic("a", True), True)
    assert table.feed(sub(b"b\0")) is not None
    with pytest.raises(SubscriptionRefused, match=r"channel 'c'.*max_subscriptions \(2\)") as info:
        table.feed(sub(b"c\0"))
    assert info.value.topic == SubscriptionTopic("c", True)
    assert isinstance(info.value, ProtocolError)
    assert table.feed(sub(b"a\0")) is None  # a topic already held costs nothing upstream
    assert len(table) == 2
    assert table.refused == 1


def test_patterns_have_their_own_cap() -> None:
    table = InterestTable(max_subscriptions=10, max_patterns=1)
    assert table.feed(sub(b"orders.")) is not None
    assert table.patterns == 1
    with pytest.raises(SubscriptionRefused, match=r"pattern prefix 'users\.'.*max_patterns"):
        table.feed(sub(b"users."))
    assert table.feed(sub(b"users\0")) is not None  # exact channels still fit
    assert table.feed(unsub(b"orders.")) is not None
    assert table.patterns == 0
    assert table.feed(sub(b"users.")) is not None


def test_a_refused_topic_unsubscribing_does_not_take_a_live_one_down() -> None:
    table = InterestTable(max_subscriptions=1, max_patterns=1)
    table.feed(sub(b"a\0"))
    for _ in range(2):
        with pytest.raises(SubscriptionRefused):
            table.feed(sub(b"b\0"))
    table.feed(unsub(b"a\0"))  # room again: another socket takes "b"
    assert table.feed(sub(b"b\0")) is not None
    # The two refused sockets leave; the accepted one still holds "b".
    assert table.feed(unsub(b"b\0")) is None
    assert table.feed(unsub(b"b\0")) is None
    assert table.count(b"b\0") == 1
    assert table.feed(unsub(b"b\0")) == InterestChange(SubscriptionTopic("b", True), False)


def test_refused_topics_remembered_are_bounded() -> None:
    table = InterestTable(max_subscriptions=1, max_patterns=0)
    table.feed(sub(b"a\0"))
    for topic in (b"b\0", b"c\0", b"b\0"):
        with pytest.raises(SubscriptionRefused):
            table.feed(sub(topic))
    assert table.refused == 3
    # "b" is remembered twice, "c" not at all (the memory is max_subscriptions topics).
    assert table.feed(unsub(b"c\0")) is None
    assert table.feed(unsub(b"b\0")) is None
    assert table.feed(unsub(b"b\0")) is None


# -- control requests ---------------------------------------------------------------


def test_a_well_formed_request_names_its_command() -> None:
    assert parse_control_request(b'{"cmd": "status"}') == "status"
    assert parse_control_request(json.dumps({"cmd": "x", "a": [[1]]}).encode()) == "x"


BAD_REQUESTS = [
    (b"[" * 60_000, "nests more than"),
    (b"{" * (MAX_CONTROL_DEPTH + 1), "nests more than"),
    (b"x" * (MAX_CONTROL_REQUEST + 1), "the limit is"),
    (b"\xff\xfe", "not JSON"),
    (b"", "not JSON"),
    (b"[1]", "is not"),
    (b'{"cmd": 1}', "is not"),
    (b'{"command": "status"}', "is not"),
]


@pytest.mark.parametrize(("request_bytes", "message"), BAD_REQUESTS)
def test_a_bad_request_raises_protocol_error(request_bytes: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_control_request(request_bytes)


@given(st.binary(max_size=200))
def test_any_bytes_give_a_command_or_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        assert isinstance(parse_control_request(data), str)
