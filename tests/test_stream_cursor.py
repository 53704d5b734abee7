"""Stream mode's decisions (circus_events.bridge.stream_cursor), fed replies: no Redis.

Gated at 100% branch coverage in ``make test`` like the protocol suite.
"""

from __future__ import annotations

from typing import Any

import pytest

from circus_events.bridge.stream_cursor import (
    WANTED_CACHE_MAX,
    ZERO,
    Interest,
    OverrunWatch,
    SavedCursor,
    StreamReplyError,
    cursor_fields,
    format_id,
    format_interest,
    id_before,
    load_record,
    parse_id,
    parse_interest,
    reconcile,
    shard_of,
    start_id,
    stream_info,
)
from circus_events.protocol import SubscriptionTopic
from circus_events.protocol.topics import MAX_TOPIC_BYTES

pytestmark = pytest.mark.timeout(30)


class ReplyError(Exception):
    """Stands for hiredis.ReplyError: an error reply is an Exception value."""


# -- ids and shards ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [(b"0-0", (0, 0)), (b"1700000000000-3", (1700000000000, 3)), (b"17", (17, 0))],
)
def test_ids_round_trip(raw: bytes, parsed: tuple[int, int]) -> None:
    assert parse_id(raw) == parsed
    assert parse_id(format_id(parsed)) == parsed


@pytest.mark.parametrize("raw", [b"", b"x-1", b"1-y"])
def test_bad_ids_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_id(raw)


@pytest.mark.parametrize(
    ("stream_id", "below"),
    [((5, 2), (5, 1)), ((5, 0), (4, 2**64 - 1)), ((0, 0), None), ((0, 1), (0, 0))],
)
def test_id_before(stream_id: tuple[int, int], below: tuple[int, int] | None) -> None:
    assert id_before(stream_id) == below


def test_shard_of_is_stable_and_in_range() -> None:
    assert shard_of(b"orders", 1) == 0
    shards = {shard_of(b"channel-%d" % n, 4) for n in range(100)}
    assert shards == {0, 1, 2, 3}
    assert shard_of(b"orders", 4) == shard_of(b"orders", 4)


# -- where a fresh bridge starts -----------------------------------------------------------


def test_start_id_is_the_birth_in_redis_clock() -> None:
    # Redis says 1000.5 s; we got the answer 2 s after we were born.
    assert start_id([b"1000", b"500000"], answered=12.0, born=10.0) == (1000500 - 2000 - 1, 0)
    # Never below zero.
    assert start_id([b"0", b"0"], answered=5.0, born=0.0) == (0, 0)


@pytest.mark.parametrize("reply", [None, [], [b"x", b"1"], ReplyError("ERR no")])
def test_start_id_refuses_a_bad_time_reply(reply: Any) -> None:
    with pytest.raises(StreamReplyError, match="unexpected TIME reply"):
        start_id(reply, answered=0.0, born=0.0)


# -- XINFO STREAM ------------------------------------------------------------------------------


def _info(**fields: Any) -> list[Any]:
    out: list[Any] = []
    for name, value in fields.items():
        out += [name.replace("_", "-").encode(), value]
    return out


def test_stream_info_untrimmed_trimmed_and_missing() -> None:
    assert stream_info(_info(length=3, last_generated_id=b"9-1")) == ((9, 1), None)
    trimmed = _info(
        length=3, last_generated_id=b"9-1", entries_added=10, recorded_first_entry_id=b"7-0"
    )
    assert stream_info(trimmed) == ((9, 1), (7, 0))
    # Nothing trimmed: entries-added equals length.
    whole = _info(
        length=3, last_generated_id=b"9-1", entries_added=3, recorded_first_entry_id=b"7-0"
    )
    assert stream_info(whole) == ((9, 1), None)
    # Redis 6: no entries-added.
    assert stream_info(
        _info(length=3, last_generated_id=b"9-1", recorded_first_entry_id=b"7-0")
    ) == (
        (9, 1),
        None,
    )
    assert stream_info(ReplyError("ERR no such key")) == (None, None)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (ReplyError("NOPERM no"), "refused XINFO STREAM"),
        (b"nonsense", "unexpected XINFO STREAM reply"),
        (_info(length=3), "unexpected XINFO STREAM reply"),
    ],
)
def test_stream_info_refuses(reply: Any, message: str) -> None:
    with pytest.raises(StreamReplyError, match=message):
        stream_info(reply)


# -- the saved record ----------------------------------------------------------------------------


def test_interest_round_trip_and_malformed() -> None:
    topics = {SubscriptionTopic("orders", True), SubscriptionTopic("jobs.", False)}
    raw = format_interest(topics)
    assert raw == b'["=orders","^jobs."]'
    assert set(parse_interest(raw)) == topics
    assert parse_interest(None) == []
    assert parse_interest(b"not json") == []
    assert parse_interest(b'{"a": 1}') == []
    assert parse_interest(b"[" * 100_000) == []  # nested past the parser's depth
    assert parse_interest(b'["=a", 3, "", "?b", "^c"]') == [
        SubscriptionTopic("a", True),
        SubscriptionTopic("c", False),
    ]


def test_cursor_fields_with_and_without_interest() -> None:
    assert cursor_fields(b"tok", b"ep", [b"1-0", b"2-0"], None) == [
        b"owner", b"tok", b"epoch", b"ep", b"s0", b"1-0", b"s1", b"2-0"
    ]  # fmt: skip
    fields = cursor_fields(b"tok", b"ep", [b"1-0"], {SubscriptionTopic("a", True)})
    assert fields[-2:] == [b"interest", b'["=a"]']


def test_load_record_round_trips_cursor_fields() -> None:
    interest = {SubscriptionTopic("a", True)}
    reply = cursor_fields(b"tok", b"ep", [b"1-2", b"3-4"], interest)
    assert load_record(reply, 2) == SavedCursor(b"ep", [b"1-2", b"3-4"], frozenset(interest))


def test_load_record_reads_what_it_can() -> None:
    # A shard missing, a shard malformed, a shard more than asked for: per shard None.
    reply = [b"epoch", b"ep", b"s1", b"bad-id", b"s0", b"5"]
    assert load_record(reply, 3) == SavedCursor(b"ep", [b"5-0", None, None], frozenset())


@pytest.mark.parametrize("reply", [None, [], ReplyError("x"), [b"s0", b"1-0"], [b"epoch", 5]])
def test_load_record_without_a_usable_record(reply: Any) -> None:
    assert load_record(reply, 1) is None


# -- reconciling ---------------------------------------------------------------------------------


def test_reconcile_fresh_bridge_starts_at_its_birth_or_older_last_id() -> None:
    settled = reconcile(None, b"ep", [None, None, None], [(50, 0), (5, 1), None], start=(10, 0))
    assert settled.cursors == [b"10-0", b"5-1", ZERO]
    assert settled.epoch == b"ep"
    assert settled.lost is None


def test_reconcile_keeps_cursors_redis_still_holds() -> None:
    settled = reconcile(b"ep", b"ep", [b"4-0", ZERO], [(9, 0), None])
    assert settled.cursors == [b"4-0", ZERO]
    assert settled.lost is None


def test_reconcile_new_epoch_resets_every_cursor() -> None:
    settled = reconcile(b"old", b"new", [b"4-0", None], [(9, 0), (9, 0)])
    assert settled.cursors == [ZERO, ZERO]
    assert settled.epoch == b"new"
    assert settled.lost is not None and "lost its data" in settled.lost


def test_reconcile_lost_tail_goes_back_to_last_id() -> None:
    # Shard 0's stream is gone, shard 1's last id is below our cursor, shard 2 is fine.
    settled = reconcile(b"ep", b"ep", [b"4-0", b"9-5", b"1-0"], [None, (9, 2), (3, 0)])
    assert settled.cursors == [ZERO, b"9-2", b"1-0"]
    assert settled.lost is not None and "shard 0, 1 is behind" in settled.lost


def test_reconcile_without_an_epoch_reply_keeps_the_known_one() -> None:
    settled = reconcile(b"ep", ReplyError("NOPERM"), [b"1-0"], [(2, 0)])
    assert settled.epoch == b"ep" and settled.lost is None
    assert reconcile(None, None, [None], [None]).epoch is None


# -- overruns ------------------------------------------------------------------------------------


def test_overrun_counted_once_per_episode() -> None:
    watch = OverrunWatch(2)
    assert not watch.check(0, None, b"5-0")  # head not trimmed
    assert not watch.check(0, (5, 0), b"5-0")  # first kept entry at our cursor: nothing missed
    assert watch.check(0, (7, 0), b"5-0")  # trimmed past us
    assert not watch.check(0, (8, 0), b"5-0")  # the same episode
    assert watch.check(1, (7, 0), b"5-0")  # another shard
    assert not watch.check(0, (7, 0), b"9-0")  # caught up: the episode ends
    assert watch.check(0, (12, 0), b"9-0")  # a new one
    assert watch.overruns == 3


# -- local interest ------------------------------------------------------------------------------


def test_interest_exact_and_prefix() -> None:
    interest = Interest()
    exact, prefix = SubscriptionTopic("orders", True), SubscriptionTopic("jobs.", False)
    assert interest.add(exact) and interest.add(prefix)
    assert not interest.add(exact)
    assert interest.wants(b"orders") and interest.wants(b"jobs.new")
    assert not interest.wants(b"orders.new") and not interest.wants(b"job")
    assert interest.wanted == {
        b"orders": True,
        b"jobs.new": True,
        b"orders.new": False,
        b"job": False,
    }
    assert interest.remove(prefix)
    assert not interest.remove(prefix)
    assert interest.wanted == {}  # a change forgets what was cached
    assert not interest.wants(b"jobs.new")
    assert interest.topics == {exact}


def test_interest_cache_is_bounded() -> None:
    interest = Interest()
    for n in range(WANTED_CACHE_MAX):
        interest.wants(b"c%d" % n)
    assert len(interest.wanted) == WANTED_CACHE_MAX
    interest.wants(b"one more")
    assert interest.wanted == {b"one more": False}
    interest.add(SubscriptionTopic("", False))  # everything
    assert not interest.wants(b"x" * (MAX_TOPIC_BYTES + 1)), "no bus's name"
    assert interest.wants(b"x" * MAX_TOPIC_BYTES) and len(interest.wanted) == 1
