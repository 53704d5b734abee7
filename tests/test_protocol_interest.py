"""Reference-counted local interest, fed with XPUB subscription frames; sync requests."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circus_events._exceptions import ProtocolError
from circus_events.protocol.interest import (
    HISTORY_REQUEST,
    SYNC_REQUEST,
    HistoryRequest,
    InterestChange,
    InterestTable,
    build_history_request,
    parse_history_request,
    parse_sync_request,
)
from circus_events.protocol.topics import SubscriptionTopic, parse_subscription_topic


def sub(topic: bytes) -> bytes:
    return b"\x01" + topic


def unsub(topic: bytes) -> bytes:
    return b"\x00" + topic


P = b"orders.paid\0"
ORDERS = SubscriptionTopic("orders.paid", exact=True)
ADDED, REMOVED = InterestChange(ORDERS, True), InterestChange(ORDERS, False)

# (name, frames fed in order, changes reported, final count of P)
FEEDS: list[tuple[str, list[bytes], list[InterestChange | None], int]] = [
    ("first subscriber", [sub(P)], [ADDED], 1),
    ("second subscriber", [sub(P), sub(P)], [ADDED, None], 2),
    ("last one leaves", [sub(P), unsub(P)], [ADDED, REMOVED], 0),
    ("one of two leaves", [sub(P), sub(P), unsub(P)], [ADDED, None, None], 1),
    ("two of two leave", [sub(P), sub(P), unsub(P), unsub(P)], [ADDED, None, None, REMOVED], 0),
    ("unsubscribe never seen", [unsub(P)], [None], 0),
    ("back after leaving", [sub(P), unsub(P), unsub(P), sub(P)], [ADDED, REMOVED, None, ADDED], 1),
    (
        "exact and prefix are different topics",
        [sub(P), sub(b"orders.paid")],
        [ADDED, InterestChange(SubscriptionTopic("orders.paid", exact=False), True)],
        1,
    ),
    ("everything", [sub(b"")], [InterestChange(SubscriptionTopic("", False), True)], 0),
]


@pytest.mark.parametrize(
    ("frames", "changes", "count"),
    [case[1:] for case in FEEDS],
    ids=[case[0] for case in FEEDS],
)
def test_feed(frames: list[bytes], changes: list[InterestChange | None], count: int) -> None:
    table = InterestTable()
    assert [table.feed(frame) for frame in frames] == changes
    assert table.count(P) == count


def test_topics_and_workers() -> None:
    table = InterestTable()
    for frame in [
        sub(b"@w:web.2\0"),
        sub(b"@w:web.1\0"),
        sub(b"@w:web.1\0"),
        sub(b"@w:prefix"),  # a prefix is not an inbox
        sub(b"orders.\0"),
        sub(b"orders."),
    ]:
        table.feed(frame)
    assert len(table) == 5
    assert table.workers() == ["web.1", "web.2"]
    assert set(table.topics()) == {
        SubscriptionTopic("@w:web.2", True),
        SubscriptionTopic("@w:web.1", True),
        SubscriptionTopic("@w:prefix", False),
        SubscriptionTopic("orders.", True),
        SubscriptionTopic("orders.", False),
    }
    assert table.feed(unsub(b"@w:web.2\0")) == InterestChange(
        SubscriptionTopic("@w:web.2", True), False
    )
    assert table.feed(unsub(b"@w:web.1\0")) is None  # one of its two sockets is still there
    assert table.workers() == ["web.1"]
    assert table.count(b"@w:web.1\0") == 1
    assert table.count(b"nothing\0") == 0


BAD_FEEDS: list[tuple[bytes, str]] = [
    (b"", "not a subscription frame"),
    (b"\x02orders\0", "not a subscription frame"),
    (b"\xff", "not a subscription frame"),
    (b"orders", "not a subscription frame"),
    (sub(b"a\0b"), "NUL inside"),
    (unsub(b"a\0b\0"), "NUL inside"),
    (sub(b"\xff\0"), "not UTF-8"),
    (sub(b"x" * 404), "too long"),
]


@pytest.mark.parametrize(("frame", "message"), BAD_FEEDS)
def test_feed_refuses(frame: bytes, message: str) -> None:
    table = InterestTable()
    with pytest.raises(ProtocolError, match=message):
        table.feed(frame)
    assert len(table) == 0


# ---------------------------------------------------------------------------
# Against a Counter
# ---------------------------------------------------------------------------

POOL = [b"orders.paid\0", b"orders.", b"", b"\0", b"@w:a\0", b"@w:b\0", b"@w:a", "é\0".encode()]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(POOL)), max_size=40))
def test_matches_counter(ops: list[tuple[bool, bytes]]) -> None:
    table = InterestTable()
    model: Counter[bytes] = Counter()
    for subscribe, raw in ops:
        before = model[raw]
        change = table.feed((b"\x01" if subscribe else b"\x00") + raw)
        if subscribe:
            model[raw] += 1
        elif before:
            model[raw] -= 1
        if subscribe and before == 0:
            assert change == InterestChange(parse_subscription_topic(raw), True)
        elif not subscribe and before == 1:
            assert change == InterestChange(parse_subscription_topic(raw), False)
        else:
            assert change is None
        for topic in POOL:
            assert table.count(topic) == model[topic]
    live = {raw for raw, n in model.items() if n > 0}
    assert len(table) == len(live)
    assert sorted(table.topics()) == sorted(parse_subscription_topic(raw) for raw in live)
    workers = (parse_subscription_topic(raw).worker for raw in live)
    assert table.workers() == sorted(w for w in workers if w is not None)


# ---------------------------------------------------------------------------
# Sync requests
# ---------------------------------------------------------------------------

SYNC_REQUESTS: list[tuple[bytes, str, bytes]] = [
    (b"\x02w1\0tok", "w1", b"tok"),
    (b"\x02w1\0", "w1", b""),
    (b"\x02w\0a\0b", "w", b"a\0b"),  # the worker id ends at the first NUL
    (b"\x02web.1 *]\0" + b"t" * 64, "web.1 *]", b"t" * 64),  # the longest token
    (b"\x02" + "é".encode() * 100 + b"\0x", "é" * 100, b"x"),
]


@pytest.mark.parametrize(("frame", "worker", "token"), SYNC_REQUESTS)
def test_parse_sync_request(frame: bytes, worker: str, token: bytes) -> None:
    assert frame.startswith(SYNC_REQUEST)
    assert parse_sync_request(frame) == (worker, token)


BAD_SYNC_REQUESTS: list[tuple[bytes, str]] = [
    (b"", "not a sync request"),
    (b"\x02", "not a sync request"),
    (b"\x02w1", "not a sync request"),
    (b"\x01w1\0tok", "not a sync request"),
    (b"\x00\x02w1\0", "not a sync request"),
    (b"\x02w1\0" + b"t" * 65, "sync token is too long"),
    (b"\x02\0tok", "names no valid worker"),
    (b"\x02\xff\0tok", "names no valid worker"),
    (b"\x02w\n\0tok", "names no valid worker"),
    (b"\x02" + b"x" * 201 + b"\0", "names no valid worker"),
]


@pytest.mark.parametrize(("frame", "message"), BAD_SYNC_REQUESTS)
def test_parse_sync_request_refuses(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_sync_request(frame)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_sync_request_garbage_raises_only_protocol_error(frame: bytes) -> None:
    try:
        worker, token = parse_sync_request(b"\x02" + frame)
    except ProtocolError:
        return
    assert b"\x02" + worker.encode("utf-8") + b"\0" + token == b"\x02" + frame


@pytest.mark.parametrize(
    "request_",
    [
        HistoryRequest("w1", b"abcd1234", 10, None, "orders.*"),
        HistoryRequest("host/app/1", b"00000000", None, 1_700_000_000_000, "x"),
        HistoryRequest("w", b"zzzzzzzz", 0, 0, "a[bc]?"),
    ],
)
def test_history_request_round_trip(request_: HistoryRequest) -> None:
    frame = build_history_request(*request_)
    assert frame.startswith(HISTORY_REQUEST)
    assert parse_history_request(frame) == request_


BAD_HISTORY_REQUESTS: list[tuple[bytes, str]] = [
    (b"", "not a history request"),
    (b"\x02w\0abcd1234\0\0\0x", "not a history request"),
    (b"\x03w\0abcd1234\0\0x", "not a history request"),
    (b"\x03w\0abc\0\0\0x", "token must be 8 bytes"),
    (b"\x03\xff\0abcd1234\0\0\0x", "bad history request"),
    (b"\x03w\0abcd1234\0ten\0\0x", "bad history request"),
    (b"\x03w\0abcd1234\0\0\0bad[", "bad history request"),
    (b"\x03w\0abcd1234\0-1\0\0x", "must not be negative"),
    (b"\x03w\0abcd1234\0\0-5\0x", "must not be negative"),
]


@pytest.mark.parametrize(("frame", "message"), BAD_HISTORY_REQUESTS)
def test_parse_history_request_refuses(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_history_request(frame)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_history_request_garbage_raises_only_protocol_error(frame: bytes) -> None:
    try:
        parse_history_request(HISTORY_REQUEST + frame)
    except ProtocolError:
        return
