"""The websocket hub's sans-IO core: frames in, requests and frames out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circus_events._exceptions import ArgumentError
from circus_events.protocol.wsproto import (
    CLOSE_ABUSE,
    CLOSE_TRY_AGAIN,
    DEFAULT_LIMITS,
    MAX_FRAME_BYTES,
    Connection,
    FanOut,
    Limits,
    Publish,
    Subscribe,
    Unsubscribe,
    encode_event,
    encode_gap,
)


def frames(connection: Connection) -> list[dict[str, Any]]:
    return [json.loads(f) for f in connection.take()]


def fresh(limits: Limits = DEFAULT_LIMITS) -> Connection:
    connection = Connection("w1#1", limits)
    assert frames(connection) == [{"type": "welcome", "socket_id": "w1#1"}]
    return connection


@pytest.mark.parametrize(
    ("frame", "request_"),
    [
        ('{"type":"subscribe","pattern":"orders.*"}', Subscribe("orders.*")),
        (
            '{"type":"subscribe","pattern":"a","last_id":"w~1~a~3","last_time":12}',
            Subscribe("a", "w~1~a~3", 12.0),
        ),
        ('{"type":"subscribe","pattern":"a","last_id":"i","last_time":0}', Subscribe("a", "i", 0)),
        (
            '{"type":"subscribe","pattern":"a","last_id":"i","last_time":1e11}',
            Subscribe("a", "i", 1e11),
        ),
        ('{"type":"unsubscribe","pattern":"orders.*"}', Unsubscribe("orders.*")),
        ('{"type":"publish","channel":"chat","data":{"x":[1]}}', Publish("chat", {"x": [1]})),
        ('{"type":"publish","channel":"chat","data":null}', Publish("chat", None)),
    ],
)
def test_valid_frames_become_requests(frame: str, request_: object) -> None:
    connection = fresh()
    assert connection.receive(frame) == request_
    assert connection.take() == []
    assert connection.abuse == 0


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b'{"type":"subscribe","pattern":"a"}', "binary frames"),
        ("{not json", "not JSON"),
        ("[" * 50_000 + "]" * 50_000, "frame too large"),
        ("[" * 30_000 + "]" * 30_000, "not JSON"),  # too deep for the parser
        ("[1, 2]", "JSON object"),
        ('{"pattern":"a"}', "unknown frame type 'None'"),
        ('{"type":"shout"}', "unknown frame type 'shout'"),
        ('{"type":"subscribe"}', "'pattern' must be a string"),
        ('{"type":"subscribe","pattern":"a","last_id":5}', "'last_id' must be a string"),
        ('{"type":"subscribe","pattern":"a","last_time":"x"}', "'last_time' must be a Unix"),
        ('{"type":"subscribe","pattern":"a","last_time":true}', "'last_time' must be a Unix"),
        # Numbers JSON parses but no clock gives: refused, never an overflow later.
        ('{"type":"subscribe","pattern":"a","last_time":' + "9" * 400 + "}", "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":1e999}', "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":-1e999}', "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":NaN}', "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":-Infinity}', "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":1e308}', "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":-1e308}', "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":-1}', "'last_time'"),
        ('{"type":"subscribe","pattern":"a","last_time":100000000001}', "'last_time'"),
        ('{"type":"subscribe","pattern":"@leader.*"}', "reserved"),
        ('{"type":"subscribe","pattern":"a["}', "without its ']'"),
        ('{"type":"unsubscribe","pattern":7}', "'pattern' must be a string"),
        ('{"type":"publish","channel":"a"}', "needs 'channel'"),
        ('{"type":"publish","data":1}', "needs 'channel'"),
        ('{"type":"publish","channel":"a.*","data":1}', "glob character"),
    ],
)
def test_bad_frames_get_an_error_frame_never_an_exception(frame: str | bytes, error: str) -> None:
    connection = fresh()
    assert connection.receive(frame) is None
    [answer] = frames(connection)
    assert answer["type"] == "error"
    assert error in answer["message"]
    assert connection.abuse == 1
    assert connection.state == "OPEN"


def test_frame_size_limit_counts_bytes_exactly_near_it() -> None:
    limits = Limits(max_frame_bytes=100)
    connection = fresh(limits)
    padding = '{"type":"publish","channel":"c","data":"%s"}'
    at_limit = padding % ("x" * (100 - len(padding % "")))
    assert len(at_limit) == 100
    assert connection.receive(at_limit) == Publish("c", "x" * 58)
    over = padding % ("é" * 30)  # 30 characters, 60 bytes: 102 in all
    assert len(over) < 100 < len(over.encode())
    assert connection.receive(over) is None
    assert "frame too large: 102 bytes" in frames(connection)[0]["message"]


def test_repeated_abuse_closes_with_1008_then_ignores_everything() -> None:
    connection = fresh(Limits(max_abuse=3))
    for _ in range(3):
        connection.receive("garbage")
    assert connection.state == "OPEN"
    connection.receive("garbage")
    assert (connection.state, connection.close_code) == ("CLOSING", CLOSE_ABUSE)
    assert len(frames(connection)) == 4
    assert connection.receive('{"type":"subscribe","pattern":"a"}') is None
    connection.close(CLOSE_TRY_AGAIN, "later")  # the first reason wins
    assert connection.close_code == CLOSE_ABUSE
    assert not connection.push("x", "a")
    connection.push_gap("a", 1)
    connection.closed()
    assert connection.state == "CLOSED"
    assert connection.take() == []


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_fuzz_any_frame_is_a_request_or_an_error(frame: str | bytes) -> None:
    connection = Connection("s", Limits(max_abuse=0))
    connection.take()
    result = connection.receive(frame)
    if result is None:
        assert [json.loads(f)["type"] for f in connection.take()] == ["error"]
        assert connection.close_code == CLOSE_ABUSE
    else:
        assert isinstance(result, Subscribe | Unsubscribe | Publish)


def test_subscription_limit_and_bookkeeping() -> None:
    connection = fresh(Limits(max_subscriptions=2))
    for pattern in ("a", "b"):
        assert connection.receive(json.dumps({"type": "subscribe", "pattern": pattern}))
        assert connection.subscribed(pattern)
    assert not connection.subscribed("a")
    # Subscribing again to a held pattern is allowed (a resume); a third is not.
    assert connection.receive('{"type":"subscribe","pattern":"a"}') == Subscribe("a")
    assert connection.receive('{"type":"subscribe","pattern":"c"}') is None
    assert "at most 2 subscriptions" in frames(connection)[0]["message"]
    assert connection.unsubscribed("a")
    assert not connection.unsubscribed("a")
    assert connection.receive('{"type":"subscribe","pattern":"c"}') == Subscribe("c")


def test_send_queue_is_bounded_in_bytes_and_reports_a_gap_when_it_has_room() -> None:
    connection = fresh(Limits(queue_bytes=100, queue_close_bytes=1000))
    frame = "x" * 40
    assert connection.push(frame, "a") and connection.push(frame, "a")
    assert not connection.push(frame, "a")  # 120 > 100
    assert not connection.push(frame, "b")
    assert connection.pending
    assert (connection.dropped, connection.dropped_bytes) == (2, 80)
    taken = connection.take()
    assert taken[:2] == [frame, frame]
    assert [json.loads(f) for f in taken[2:]] == [
        {"type": "gap", "channel": "a", "missed": 1},
        {"type": "gap", "channel": "b", "missed": 1},
    ]
    assert connection.dropped_bytes == 0
    assert not connection.pending
    assert connection.push(frame, "a")


def test_gaps_wait_until_the_queue_is_at_most_half_full() -> None:
    connection = fresh(Limits(queue_bytes=100))
    connection.push("x" * 60, "a")
    assert not connection.push("x" * 60, "a")
    assert not connection.push("x" * 60, "a")  # still 60 queued: over half, no gap yet
    assert connection.take()[-1] == encode_gap("a", 2)
    connection.push("x" * 60, "a")
    assert not connection.push("x" * 60, "b")
    connection.take()
    assert connection.push("x" * 10, "a")
    connection.push("x" * 40, "a")
    assert not connection.push("x" * 60, "c")
    assert connection.push("x", "a")  # 50 queued: half, room to tell the gap first
    assert connection.take()[2:] == [encode_gap("c", 1), "x"]


def test_a_single_event_larger_than_the_queue_still_goes_to_an_empty_queue() -> None:
    connection = fresh(Limits(queue_bytes=10))
    assert connection.push("x" * 50, "a")
    assert not connection.push("y", "a")


def test_a_socket_that_never_catches_up_is_closed_with_1013() -> None:
    connection = fresh(Limits(queue_bytes=100, queue_close_bytes=200))
    connection.push("x" * 100, "a")
    for _ in range(5):
        assert not connection.push("x" * 50, "a")
    assert (connection.state, connection.close_code) == ("CLOSING", CLOSE_TRY_AGAIN)
    assert "too slow" in connection.close_reason


def test_push_gap_and_error_frames_are_never_dropped() -> None:
    connection = fresh(Limits(queue_bytes=10))
    connection.push("x" * 10, "a")
    connection.push_gap("a", None)
    connection.refuse("no")
    taken = connection.take()
    assert json.loads(taken[1]) == {"type": "gap", "channel": "a", "missed": None}
    assert json.loads(taken[2])["type"] == "error"


def test_encode_event_once_and_data_json_cannot_hold() -> None:
    frame = json.loads(encode_event("c", {"k": "é"}, "o~1~c~2", "o", "h", 1.5))
    assert frame == {
        "type": "event",
        "channel": "c",
        "data": {"k": "é"},
        "id": "o~1~c~2",
        "origin": "o",
        "host": "h",
        "time": 1.5,
    }
    assert encode_event("c", "é", "i", "o", "h", 0).isascii()
    assert json.loads(encode_event("c", 1, "i", "o", "h", 0, pattern="c*"))["pattern"] == "c*"
    assert json.loads(encode_event("c", b"\x00", "i", "o", "h", 0, direct=True))["data"] == (
        "b'\\x00'"
    )
    assert json.loads(encode_event("c", float("nan"), "i", "o", "h", 0))["data"] == "nan"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_frame_bytes", 0),
        ("max_subscriptions", 0),
        ("queue_bytes", 0),
        ("queue_close_bytes", 0),
        ("max_connections", 0),
        ("resume_max_events", 0),
        ("max_abuse", -1),
        ("ping_interval", 0.0),
        ("max_frame_bytes", "10"),
        ("queue_bytes", 1.5),
        ("max_connections", True),
        ("ping_interval", float("inf")),
        ("ping_interval", float("nan")),
        ("ping_interval", "20"),
    ],
)
def test_limits_are_checked(field: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=rf"^{field}: must be"):
        Limits(**{field: value})


def test_defaults() -> None:
    assert DEFAULT_LIMITS.max_frame_bytes == MAX_FRAME_BYTES
    assert DEFAULT_LIMITS.max_abuse > 0


def test_fan_out_counts_references_per_pattern() -> None:
    table = FanOut()
    one, two = Connection("w#1"), Connection("w#2")
    assert table.add(one, "a")  # first reference: open the bus subscription
    one.subscribed("a")
    assert not table.add(two, "a")
    two.subscribed("a")
    assert not table.add(two, "a")  # twice is one reference
    assert sorted(c.socket_id for c in table.targets("a")) == ["w#1", "w#2"]
    assert table.count("a") == 2
    assert not table.remove(one, "a")
    assert not table.remove(one, "a")  # not there
    assert not table.remove(one, "zzz")
    assert table.remove_all(two) == ["a"]  # last reference: close it
    assert list(table.targets("a")) == []
    assert table.patterns() == []


def test_fan_out_relay_is_one_more_reference() -> None:
    table = FanOut()
    one = Connection("w#1")
    assert table.relay("news.*")
    assert not table.relay("news.*")
    assert table.relayed("news.*") and not table.relayed("a")
    assert not table.add(one, "news.*")
    one.subscribed("news.*")
    assert table.remove_all(one) == []  # the relay still holds it
    assert table.patterns() == ["news.*"]
    assert table.unrelay("news.*")
    assert not table.unrelay("news.*")
    assert table.add(one, "x") and not table.relay("x") and not table.unrelay("x")
