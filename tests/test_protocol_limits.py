"""Byte budgets by size class, the subscription caps, and control request checks."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circus_events._exceptions import ProtocolError
from circus_events.protocol import (
    CLASS_TOPS,
    MAX_CONTROL_DEPTH,
    MAX_CONTROL_REQUEST,
    InterestChange,
    InterestTable,
    SizeClass,
    SubscriptionRefused,
    SubscriptionTopic,
    parse_control_request,
    size_classes,
    worst_case,
)

MiB = 1024 * 1024

# -- size classes ---------------------------------------------------------------


def test_defaults_keep_the_frame_limit_for_small_events_and_bound_bytes() -> None:
    classes = size_classes(64 * MiB, 20_000, MiB + 4096)
    assert [c.top for c in classes] == [*CLASS_TOPS, MiB + 4096]
    assert classes[0].hwm == 20_000
    assert classes[1].hwm > classes[2].hwm >= 20
    assert worst_case(classes) <= 64 * MiB


def test_a_small_max_frame_has_fewer_classes() -> None:
    classes = size_classes(MiB, 100, 2048)
    assert classes == (SizeClass(1024, 100), SizeClass(2048, 100))
    assert worst_case(classes) == 100 * 1024 + 100 * 1024 + 2048


def test_every_mark_is_at_least_one() -> None:
    # libzmq reads 0 as "no limit": a budget too small still gets 1 frame a class.
    classes = size_classes(MiB, 20_000, MiB)
    assert all(c.hwm == 1 for c in classes)


@given(
    max_frame=st.integers(1025, 8 * MiB),
    factor=st.integers(4, 256),
    frame_hwm=st.integers(1, 100_000),
)
def test_the_worst_case_stays_within_the_budget(
    max_frame: int, factor: int, frame_hwm: int
) -> None:
    budget = factor * max_frame
    classes = size_classes(budget, frame_hwm, max_frame)
    assert worst_case(classes) <= budget
    marks = [c.hwm for c in classes]
    assert marks == sorted(marks, reverse=True)  # the proof needs non-increasing marks
    assert all(1 <= m <= frame_hwm for m in marks)


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
