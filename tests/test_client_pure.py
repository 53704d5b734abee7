"""The pure client core (circus_events/_client: core, publishing, batch, queues,
plans, limits, credit): every decision, with the time given, to full branch coverage."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from circus_events import (
    GAP_LATE,
    GAP_QUEUE_FULL,
    ArgumentError,
    BridgeError,
    ConfigError,
    Event,
    Gap,
    MessageTooLarge,
)
from circus_events._client.batch import FULL, REFUSED, Step
from circus_events._client.confirms import KEPT_FRAME_OVERHEAD
from circus_events._client.core import STATS_DOC, BusCore
from circus_events._client.credit import CREDIT_PREFIX, SendCredit
from circus_events._client.limits import (
    CREDIT_RETRY,
    DEFAULT_QUEUE_SIZE,
    HISTORY_RETRY,
    HISTORY_TIMEOUT,
    MAX_CACHED_CHANNELS,
    SYNC_RETRY,
)
from circus_events._client.options import ClientOptions
from circus_events._client.plans import (
    ASK_CREDIT,
    NOW,
    AskSync,
    AwaitConfirmed,
    AwaitCredit,
    AwaitMarker,
    Plan,
    SendMarker,
    advance,
    credit_plan,
    flush_plan,
    sync_plan,
)
from circus_events._client.queues import Failure, QueueBound, Subscriber
from circus_events.protocol import (
    CONFIRM_CHANNEL,
    CONFIRMED,
    FLAG_HOST_ONLY,
    FLAG_NOTICE,
    FLAG_REPLAY,
    FLUSH_CHANNEL,
    HELLO_CONFIRMS,
    HELLO_NO_CONFIRMS,
    HISTORY_END_CHANNEL,
    INSTANCE_BYTES,
    RESUME_CHANNEL,
    SYNC_CHANNEL,
    Codec,
    Pattern,
    decode_frame,
    encode_batch,
    encode_confirm,
    encode_frame,
    inbox_channel,
)
from circus_events.protocol.lease import LEADER_CHANNEL

T0 = 1000.0
TOKEN = b"t" * 8
OTHER = b"u" * 8


def core(worker: str = "me", gaps: list[Gap] | None = None, **options: Any) -> BusCore:
    resolved = ClientOptions.resolve(dir="/nonexistent", host="h", worker=worker, **options)
    return BusCore(resolved, gaps.append if gaps is not None else None, 7)


def frame(
    channel: str = "ch",
    seq: int = 1,
    *,
    origin: str = "pub",
    payload: bytes = b"p",
    target: str | None = None,
    flags: int = 0,
    epoch: int = 1,
) -> bytes:
    return encode_frame(
        channel, origin=origin.encode(), host=b"h", epoch=epoch, seq=seq, time=5.0,
        codec=Codec.RAW, payload=payload, flags=flags, target=target,
    )  # fmt: skip


def queued(pattern: str = "ch", **kwargs: Any) -> tuple[Subscriber, list[Any]]:
    got: list[Any] = []
    subscriber = Subscriber(
        Pattern(pattern), got.append, sink_many=lambda events, size: got.extend(events), **kwargs
    )
    return subscriber, got


# -- receiving ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "channel", "exact", "ours"),
    [
        ("orders.paid", "orders.paid", b"\x01", True),  # an exact channel it holds
        ("orders.*", "orders.", b"\x00", True),  # a pattern prefix it holds
        ("orders.paid", "other", b"\x01", False),  # someone else's topic
        ("orders.*", "orders", b"\x00", False),  # a prefix it does not hold
    ],
)
def test_a_refusal_notice_is_reported_only_for_a_topic_of_this_bus(
    pattern: str, channel: str, exact: bytes, ours: bool, caplog: pytest.LogCaptureFixture
) -> None:
    bus = core()
    subscriber, _ = queued(pattern)
    bus.add(subscriber)
    notice = frame(
        channel, payload=exact + b"past max_subscriptions", flags=FLAG_NOTICE | FLAG_HOST_ONLY
    )
    with caplog.at_level(logging.ERROR):
        assert bus.accept(notice) is None  # a notice is never an event
    assert bus.refused == ("past max_subscriptions" if ours else None)
    assert ("past max_subscriptions" in caplog.text) is ours


def test_frames_that_are_not_for_this_worker_or_not_events_give_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = core()
    with caplog.at_level(logging.WARNING):
        assert bus.accept(b"not a frame") is None
    assert bus.stats()["undecodable"] == 1 and "does not decode" in caplog.text
    assert bus.accept(frame(target="someone-else")) is None
    markers: list[bytes] = []
    assert bus.accept(frame(FLUSH_CHANNEL, payload=b"m1", target="me")) is None  # no listener
    bus.on_flush = markers.append
    assert bus.accept(frame(FLUSH_CHANNEL, payload=b"m2", target="me")) is None
    assert bus.accept(frame(SYNC_CHANNEL, seq=2, payload=b"m3", target="me")) is None
    assert markers == [b"m2", b"m3"]
    # Leader messages go to their own listener, never to subscriptions.
    assert bus.accept(frame(LEADER_CHANNEL, seq=3, payload=b"l1", target="me")) is None
    leader: list[bytes] = []
    bus.on_leader = leader.append
    assert bus.accept(frame(LEADER_CHANNEL, seq=4, payload=b"l2", target="me")) is None
    assert leader == [b"l2"]


def test_direct_and_host_only_messages_are_numbered_apart() -> None:
    gaps: list[Gap] = []
    bus = core(gaps=gaps)
    direct = bus.accept(frame("ch", 1, target="me"))
    assert direct is not None and direct[0].channel == "ch"
    assert bus.accept(frame("ch", 1, flags=1)) is not None  # host-only: its own sequence
    assert bus.accept(frame("ch", 1)) is not None, "not a duplicate of either"
    assert bus.accept(frame("ch", 4, flags=1)) is not None
    assert bus.accept(frame("ch", 2, target="me")) is not None
    assert [(gap.missed, gap.seq) for gap in gaps] == [(2, 4)]  # host-only 2..3 missing


def test_single_frames_drop_duplicates_and_report_holes_even_without_on_gap() -> None:
    quiet = core()
    assert quiet.accept(frame(seq=1)) is not None
    assert quiet.accept(frame(seq=1)) is None  # a duplicate
    assert quiet.accept(frame(seq=4)) is not None  # a hole, nobody to tell
    assert quiet.stats()["missed"] == 2


def test_a_failing_on_gap_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def fail(gap: Gap) -> None:
        raise RuntimeError("on_gap broke")

    bus = BusCore(ClientOptions.resolve(dir="/x", host="h", worker="me"), fail, 7)
    bus.accept(frame(seq=1))
    with caplog.at_level(logging.ERROR):
        assert bus.accept(frame(seq=3)) is not None
    assert "on_gap callback failed" in caplog.text


def test_deliver_fills_queues_wakes_them_and_returns_the_handlers() -> None:
    bus = core()
    woken, got = queued(wake=lambda: None)
    silent, got_silent = queued("c*")
    handler = Subscriber(Pattern("ch"), print)
    other = Subscriber(Pattern("nope"), print)
    for subscriber in (woken, silent, handler, other):
        bus.add(subscriber)
    events, handlers = bus.deliver(frame(seq=1)) or ([], [])
    assert handlers == [handler] and [e.seq for e in events] == [1]
    assert len(got) == len(got_silent) == 1 and bus.woken == {woken}
    bus.remove(handler)
    assert bus.deliver(frame(seq=2)) is None, "no handler: nothing to call"
    assert bus.deliver(frame(seq=2)) is None, "a duplicate"
    assert len(got) == 2
    bus.remove(woken)
    assert bus.woken == set(), "a closed subscription is not woken"


def test_a_handler_loading_history_holds_live_events_up_to_the_default_bound() -> None:
    gaps: list[Gap] = []
    bus = core(gaps=gaps)
    handler = Subscriber(Pattern("ch"), print)
    bus.add(handler)
    bus.add_history(handler, None, None, TOKEN, T0)
    one = bus.accept(frame(seq=1))
    assert one is not None
    assert bus.route(one * (DEFAULT_QUEUE_SIZE + 2)) == []
    assert handler.history is not None and len(handler.history.held) == DEFAULT_QUEUE_SIZE
    assert gaps == [Gap("pub", "h", "ch", 2, 1, "ch", GAP_QUEUE_FULL)]
    assert bus.stats()["dropped"] == 2


# -- history ------------------------------------------------------------------------


def replay(seq: int, token: bytes = TOKEN, payload: bytes = b"old") -> bytes:
    return frame("ch", seq, payload=token + payload, target="me", flags=FLAG_REPLAY)


def end(token: bytes = TOKEN, error: bytes = b"") -> bytes:
    return frame(HISTORY_END_CHANNEL, 99, origin="bridge", payload=token + error, target="me")


def test_history_comes_first_then_live_events_it_did_not_contain() -> None:
    bus = core()
    subscription, _ = queued()
    bus.add(subscription)
    bus.add_history(subscription, 5, None, TOKEN, T0)
    assert len(bus.take_outbox()) == 2, "the subscription, then the request"
    assert bus.deliver(frame(seq=2)) is None  # live, held
    assert bus.deliver(frame(seq=3)) is None
    assert bus.accept(replay(1)) is None and bus.accept(replay(2)) is None
    assert bus.accept(replay(1, OTHER)) is None, "an answer nobody waits for"
    assert bus.accept(end()) is None
    done = bus.settle(T0 + 1)
    assert [(s, [e.seq for e in events]) for s, events in done] == [(subscription, [1, 2, 3])]
    assert subscription.history is None and not bus.loads and not bus.finished
    assert bus.deliver(frame(seq=2)) is None, "a late live copy is a duplicate"
    assert bus.settle(T0 + 2) == []


def test_history_loads_one_at_a_time_and_failures_reach_the_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = core()
    failures: list[Exception] = []
    first, _ = queued(fail=failures.append)
    second = Subscriber(Pattern("ch"), print)
    bus.add(first)
    bus.add(second)
    bus.add_history(first, 1, None, TOKEN, T0)
    bus.add_history(second, None, 1500, OTHER, T0)
    assert len(bus.outbox) == 1, "the second waits for the first"
    bus.accept(end(TOKEN, b"no stream mode"))
    assert len(bus.outbox) == 2, "the second is asked as the first ends"
    bus.accept(end(OTHER, b"also not"))
    with caplog.at_level(logging.WARNING):
        done = bus.settle(T0)
    assert [s for s, _ in done] == [first, second]
    assert [str(f) for f in failures] == ["no stream mode"]
    assert "history for ch: also not" in caplog.text


def test_an_unanswered_history_request_is_asked_again_then_given_up() -> None:
    bus = core()
    subscription, _ = queued(fail=lambda error: None)
    bus.add(subscription)
    bus.check_history(T0)  # nothing loading: nothing to do
    bus.add_history(subscription, 3, None, TOKEN, T0)
    bus.outbox.clear()
    bus.check_history(T0 + HISTORY_RETRY / 2)
    assert bus.outbox == []
    bus.check_history(T0 + HISTORY_RETRY * 1.5)
    assert len(bus.outbox) == 1, "asked again"
    bus.accept(replay(1))  # the bridge answers: not asked again from now
    bus.check_history(T0 + HISTORY_RETRY * 2)
    bus.check_history(T0 + HISTORY_RETRY * 2.9)
    assert len(bus.outbox) == 1
    bus.check_history(T0 + HISTORY_TIMEOUT + 1)
    assert bus.loads == {} and bus.finished[0].error is not None
    assert isinstance(bus.finished[0].error, BridgeError)


def test_closing_a_loading_subscription_moves_on_and_delivers_nothing() -> None:
    bus = core()
    first, _ = queued()
    second, _ = queued()
    bus.add(first)
    bus.add(second)
    bus.add_history(first, 1, None, TOKEN, T0)
    bus.add_history(second, 1, None, OTHER, T0)
    assert bus.remove(first)
    assert list(bus.loads) == [OTHER] and len(bus.outbox) == 2
    assert bus.take_completed() == [], "closed before its history came"


def test_bad_history_arguments_raise() -> None:
    bus = core()
    subscription, _ = queued()
    with pytest.raises(ArgumentError, match="history"):
        bus.add_history(subscription, -1, None, TOKEN, T0)
    with pytest.raises(ArgumentError, match="token"):
        bus.add_history(subscription, 1, None, b"short", T0)


def test_settle_reports_drops_and_stats_match_their_documentation() -> None:
    gaps: list[Gap] = []
    bus = core(gaps=gaps)
    bound = bus.new_bound(Pattern("ch"), 1, None)
    events = bus.accept(frame(seq=1)) or []
    bound.drop(events[0], 1)
    assert bus.settle(T0) == [] and len(gaps) == 1
    assert all(f"``{name}``" in STATS_DOC for name in bus.stats())
    assert STATS_DOC.count("- ``") == len(bus.stats())


# -- publishing ---------------------------------------------------------------------


def test_place_says_what_to_send() -> None:
    bus = core(codec="raw")
    lone = bus.prepare("ch", b"a", "cluster")
    assert bus.place(lone, False, T0) is Step.SEND_ALONE
    assert bus.place(lone, True, T0) is Step.OPENED
    assert bus.place(bus.prepare("ch", b"b", "cluster"), True, T0) is Step.HELD
    assert bus.place(bus.prepare("ch", b"c", "cluster"), False, T0) is Step.SEND_BATCH
    assert bus.place(bus.prepare("other", b"d", "cluster"), True, T0) is Step.BATCH_FIRST
    bus.batch_sent()
    big = core(codec="raw", max_message_bytes=1024)
    assert big.place(big.prepare("ch", b"x" * 900, "cluster"), True, T0) is Step.OPENED
    assert big.place(big.prepare("ch", b"", "cluster"), True, T0) is Step.SEND_BATCH  # now full


def test_join_takes_only_what_the_open_batch_can() -> None:
    bus = core()  # json
    assert bus.join("ch", 1, "cluster", T0) is REFUSED, "no batch open"
    bus.hold(bus.prepare("ch", 1, "cluster"), T0)
    assert bus.join("ch", {"a": 1}, "cluster", T0)
    assert bus.join("ch", [2], "cluster", T0)
    assert bus.join("other", 1, "cluster", T0) is REFUSED
    assert bus.join("ch", 1, "host", T0) is REFUSED
    held = len(bus.batch.payloads) if bus.batch else 0
    bus.batch_sent()
    raw = core(codec="raw", max_message_bytes=1024)
    raw.hold(raw.prepare("ch", b"x", "cluster"), T0)
    assert raw.join("ch", bytearray(b"z"), "cluster", T0), "encoded, not taken as it is"
    assert raw.join("ch", b"y" * 1000, "cluster", T0) is REFUSED, "no room"
    assert raw.stats()["published"] == 2 and held == 3
    full = core(codec="raw", max_message_bytes=1024)
    full.hold(full.prepare("ch", b"x", "cluster"), T0)
    assert full.join("ch", b"y" * 700, "cluster", T0) is FULL


def test_prepare_checks_scope_target_size_and_forgets_channels_past_the_cache() -> None:
    bus = core(max_message_bytes=1024)
    with pytest.raises(ArgumentError, match="scope"):
        bus.prepare("ch", 1, "everywhere")
    with pytest.raises(ArgumentError, match="worker"):
        bus.prepare("ch", 1, "cluster", target="")
    with pytest.raises(MessageTooLarge):
        bus.prepare("ch", "x" * 2000, "cluster")
    direct = bus.prepare("ch", 1, "host", target="w2")
    assert direct.seq_key == inbox_channel("w2") + "\0host"
    for n in range(MAX_CACHED_CHANNELS + 1):
        bus.prepare(f"c{n}", 1, "cluster")
    assert len(bus._known_channels) < MAX_CACHED_CHANNELS, "cleared when full"
    assert bus.prepare("c0", 2, "host").seq_key == "c0\0host"
    bus.prepare("c0", 2, "host")
    assert bus.prepare("c0", 2, "host").key[1] == 1


def test_frames_carry_the_given_time_and_markers_name_this_worker() -> None:
    bus = core(codec="raw")
    marker = bus.flush_frame(b"tok", 123.5)
    reader = core("reader")
    assert reader.accept(marker) is None  # for "me", not for the reader
    events = core("me2").accept(bus.encode("ch", b"x", "cluster", wall=42.0)) or []
    assert [e.time for e in events] == [42.0]
    assert bus.sync_request(b"tok").endswith(b"me\0tok")


def test_process_events_are_numbered_and_checked() -> None:
    bus = core(max_message_bytes=1024)
    first = bus.local_event("ch", {"n": 1}, 5.0)
    second = bus.local_event("ch", {"n": 2}, 6.0)
    assert (first.seq, second.seq, second.time, second.data) == (1, 2, 6.0, {"n": 2})
    assert isinstance(first, Event)
    with pytest.raises(MessageTooLarge):
        bus.local_event("ch", "x" * 2000, 7.0)


# -- queues ---------------------------------------------------------------------------


def test_an_empty_queue_takes_one_event_even_past_the_byte_bound() -> None:
    bound = QueueBound("p", 10, 100, [], per_event=0)
    assert bound.admit(3, 0, 0) == 3
    assert bound.admit(2, 1000, 0) == 1


# -- plans: sync() and flush() --------------------------------------------------------


class FakeDriver:
    """Runs a plan against a clock and scripted answers."""

    def __init__(
        self, *, answers: dict[bytes, float], sends: bool = True, confirmed: float = 0.0
    ) -> None:
        self.now = 0.0
        self.confirmed = confirmed  # when the bridge has confirmed everything
        self.answers = answers  # token -> when the marker comes back
        self.sends = sends
        self.asked: list[bytes] = []
        self.sent: list[bytes] = []

    def run(self, plan: Plan) -> bool:
        action = advance(plan, None)
        while not isinstance(action, bool):
            reply: Any = None
            if action == NOW:
                reply = self.now
            elif isinstance(action, AskSync):
                self.asked.append(action.token)
            elif isinstance(action, SendMarker):
                self.sent.append(action.token)
                reply = self.sends
            elif isinstance(action, AwaitConfirmed):
                reply = self.confirmed <= self.now + action.timeout
                self.now = max(self.now, min(self.confirmed, self.now + action.timeout))
            else:
                assert isinstance(action, AwaitMarker)
                back = self.answers.get(action.token, float("inf"))
                reply = back <= self.now + action.timeout
                self.now = back if reply else self.now + action.timeout
            action = advance(plan, reply)
        return action


def test_sync_asks_every_retry_until_answered_or_out_of_time() -> None:
    driver = FakeDriver(answers={b"s": 0.5})
    assert driver.run(sync_plan(b"s", 5.0)) is True
    assert len(driver.asked) == 3  # at 0, 0.2, 0.4
    silent = FakeDriver(answers={})
    assert silent.run(sync_plan(b"s", 1.0)) is False
    assert len(silent.asked) == round(1.0 / SYNC_RETRY)


def test_flush_syncs_first_then_sends_its_marker_until_it_comes_back() -> None:
    driver = FakeDriver(answers={b"s": 0.0, b"f": 2.5})
    assert driver.run(flush_plan(b"s", b"f", 10.0)) is True
    assert driver.sent == [b"f"] * 3  # at 0, 1, 2: back at 2.5
    assert FakeDriver(answers={}).run(flush_plan(b"s", b"f", 1.0)) is False, "no sync"
    late = FakeDriver(answers={b"s": 0.0})
    assert late.run(flush_plan(b"s", b"f", 2.0)) is False
    full = FakeDriver(answers={b"s": 0.0}, sends=False)
    assert full.run(flush_plan(b"s", b"f", 2.0)) is False and full.sent == [b"f"]


def test_flush_then_waits_for_the_confirms_within_its_time() -> None:
    confirmed = FakeDriver(answers={b"s": 0.0, b"f": 0.5}, confirmed=3.0)
    assert confirmed.run(flush_plan(b"s", b"f", 10.0)) is True and confirmed.now == 3.0
    unconfirmed = FakeDriver(answers={b"s": 0.0, b"f": 0.5}, confirmed=30.0)
    assert unconfirmed.run(flush_plan(b"s", b"f", 10.0)) is False


def run_credit(credit: SendCredit, seconds: float, back_at: float) -> tuple[bool, list[float]]:
    """Run a credit plan; a marker sent by ``back_at`` comes back then (the
    bridge has read everything). The result, and when markers were sent."""
    now, asks = 0.0, []
    plan = credit_plan(credit, seconds)
    action = advance(plan, None)
    while not isinstance(action, bool):
        reply: Any = None
        if action == NOW:
            reply = now
        elif action == ASK_CREDIT:
            asks.append(now)
            credit.marker_token(now)
        else:
            assert isinstance(action, AwaitCredit)
            if asks and asks[-1] <= back_at <= now + action.timeout:
                credit.read, now = credit.sent, back_at
            else:
                now += action.timeout
        action = advance(plan, reply)
    return action, asks


def test_credit_waits_only_while_exhausted_and_asks_again_every_flush_retry() -> None:
    credit = SendCredit(100)
    assert run_credit(credit, 5.0, back_at=0.0) == (True, []), "not exhausted: no wait"
    credit.sent = 150
    assert run_credit(credit, 5.0, back_at=0.35) == (True, [0.0]), "no marker yet: one now"
    credit.sent, credit.asked_at = 300, 0.0
    done, asks = run_credit(credit, 2.5, back_at=float("inf"))
    assert not done and asks == pytest.approx([1.0, 2.0], abs=CREDIT_RETRY + 0.01), "then give up"


def test_a_batch_that_continues_its_stream_is_taken_whole() -> None:
    bus = core()
    first = encode_batch(
        "ch", origin=b"pub", host=b"h", epoch=1, first_seq=1, times=[1.0] * 3,
        codec=Codec.RAW, payloads=[b"a", b"b", b"c"],
    )  # fmt: skip
    following = encode_batch(
        "ch", origin=b"pub", host=b"h", epoch=1, first_seq=4, times=[2.0] * 2,
        codec=Codec.RAW, payloads=[b"d", b"e"],
    )  # fmt: skip
    assert [e.seq for e in bus.accept(first) or []] == [1, 2, 3]
    assert [(e.seq, e.time) for e in bus.accept(following) or []] == [(4, 2.0), (5, 2.0)]
    assert bus.stats()["received"] == 5


def test_events_older_than_max_delay_are_dropped_for_all_and_reported_late() -> None:
    gaps: list[Gap] = []
    bus = core(gaps=gaps, max_delay=1.0)
    bus.wall_clock = lambda: 12.5
    subscriber, got = queued()
    bus.add(subscriber)
    batch = encode_batch(
        "ch", origin=b"pub", host=b"h", epoch=1, first_seq=1, times=[10.0, 11.0, 12.0],
        codec=Codec.RAW, payloads=[b"a", b"b", b"c"],
    )  # fmt: skip
    assert bus.deliver(batch) is None  # no handler: queued
    assert [event.payload for event in got] == [b"c"], "sent 1.5 and 2.5 s ago: late"
    assert bus.deliver(frame(seq=4)) is None and len(got) == 1, "sent at 5.0: all late"
    bus.settle(0.0)
    assert gaps == [Gap("pub", "h", "ch", 3, 4, None, GAP_LATE)]
    assert bus.stats()["late"] == 3 and bus.stats()["dropped"] == 0
    bus.wall_clock = lambda: 5.5
    assert bus.deliver(frame(seq=5)) is None and len(got) == 2, "in time"


def test_max_delay_needs_a_clock_and_a_positive_number() -> None:
    bus = core(max_delay=1.0)
    with pytest.raises(RuntimeError, match="wall_clock"):
        bus.deliver(frame())
    for bad in (0, -1.0, "1", True, math.inf):
        with pytest.raises(ConfigError, match="max_delay"):
            core(max_delay=bad)


def test_drops_without_on_gap_are_counted_and_routes_skip_other_patterns() -> None:
    bus = core()
    bound = bus.new_bound(Pattern("ch"), 1, None)
    events = bus.accept(frame(seq=1)) or []
    bound.drop(events[0], 1)
    bus.report_drops()
    assert bus.stats()["dropped"] == 1
    elsewhere = Subscriber(Pattern("other"), print)
    bus.add(elsewhere)
    assert bus.route(events) == []


def test_a_direct_or_foreign_codec_message_opens_a_batch_join_cannot_extend() -> None:
    bus = core()
    assert bus.hold(bus.prepare("ch", 1, "cluster", target="w2"), T0)
    assert bus.join("ch", 2, "cluster", T0) is REFUSED
    assert Failure(ValueError("x")).error.args == ("x",)


# -- publisher confirms (stream mode) ---------------------------------------------------


def confirm_frame(kind: int, entries: list[tuple[str, int, int]] | None = None) -> bytes:
    return encode_frame(
        CONFIRM_CHANNEL,
        origin=b"bridge",
        host=b"h",
        epoch=1,
        seq=1,
        time=0.0,
        codec=Codec.RAW,
        payload=encode_confirm(kind, b"i" * INSTANCE_BYTES, entries or []),
        target="me",
    )


def sent(bus: BusCore, channel: str, count: int, scope: str = "cluster") -> list[bytes]:
    frames = []
    for n in range(count):
        prepared = bus.prepare(channel, n, scope)
        frames.append(bus.single_frame(prepared, 0.0))
        bus.commit(prepared, frames[-1])
    return frames


def test_cluster_frames_are_kept_until_the_bridge_confirms_them() -> None:
    bus = core()
    kept = sent(bus, "a", 3) + sent(bus, "b", 1)
    sent(bus, "h", 2, "host")  # never in Redis: never kept
    assert bus.stats()["unconfirmed"] == 4
    assert bus.accept(confirm_frame(CONFIRMED, [("a", 7, 2), ("b", 6, 1), ("z", 7, 1)])) is None
    assert bus.stats()["unconfirmed"] == 4, "applied by the sending side"
    bus.unconfirmed.apply()
    assert bus.stats()["unconfirmed"] == 2, "a:3 left, and b (another epoch)"
    assert bus.hello(HELLO_CONFIRMS, b"i" * 8, 0.0)[1:] == [kept[2], kept[3]]
    # A confirm that overtakes the keep of its frame still counts.
    bus.accept(confirm_frame(CONFIRMED, [("a", 7, 4), ("b", 7, 1)]))
    sent(bus, "a", 1)
    assert bus.unconfirmed.messages == 0 and bus.unconfirmed.nbytes == 0
    assert bus.unconfirmed.keep("a", 4, 1, b"x", 10**6) == 0, "confirmed already"


def test_a_sent_batch_is_kept_whole() -> None:
    bus = core()
    bus.hold(bus.prepare("a", 1, "cluster"), 0.0)
    bus.hold(bus.prepare("a", 2, "cluster"), 0.0)
    batch = bus.batch_frame()
    bus.batch_sent(batch)
    assert bus.stats()["unconfirmed"] == 2
    bus.unconfirmed.confirm(7, [("a", 7, 1)])
    assert bus.stats()["unconfirmed"] == 2, "the batch goes to 2"
    bus.unconfirmed.confirm(7, [("a", 7, 2)])
    assert bus.stats()["unconfirmed"] == 0
    bus.hold(bus.prepare("h", 1, "host"), 0.0)
    bus.batch_sent(bus.batch_frame())
    bus.hold(bus.prepare("a", 3, "cluster"), 0.0)
    bus.batch_sent()  # no frame given: nothing kept
    assert bus.stats()["unconfirmed"] == 0


def test_a_hello_resumes_then_resends_and_a_bridge_without_confirms_stops_the_keeping() -> None:
    bus = core()
    kept = sent(bus, "a", 2)
    heard: list[tuple[int, bytes]] = []
    bus.on_hello = lambda kind, instance: heard.append((kind, instance))
    bus.accept(confirm_frame(HELLO_CONFIRMS))
    assert heard == [(HELLO_CONFIRMS, b"i" * 8)]
    resume, *again = bus.hello(HELLO_CONFIRMS, b"i" * 8, 0.0)
    assert again == kept and bus.unconfirmed.instance == b"i" * 8
    marker = decode_frame(resume)
    assert marker.channel == RESUME_CHANNEL and marker.target == "me"
    assert marker.flags & FLAG_HOST_ONLY and marker.payload == b"i" * 8
    bus.on_hello = None
    bus.accept(confirm_frame(HELLO_NO_CONFIRMS))  # pub/sub mode: keep nothing
    assert bus.stats()["unconfirmed"] == 0 and not bus.unconfirmed.active
    sent(bus, "a", 1)
    assert bus.stats()["unconfirmed"] == 0
    assert bus.hello(HELLO_NO_CONFIRMS, b"j" * 8, 0.0) == []


def test_past_the_bound_the_oldest_are_let_go_and_counted() -> None:
    bus = core()
    one = len(sent(core(), "a", 1)[0]) + KEPT_FRAME_OVERHEAD
    bus.unconfirmed_max_bytes = 2 * one
    sent(bus, "a", 1) + sent(bus, "b", 3)  # a's only frame goes, then b's first
    assert bus.stats()["released"] == 2 and bus.stats()["unconfirmed"] == 2
    bus.unconfirmed.confirm(7, [("a", 7, 1), ("b", 7, 3), ("b", 7, 1)])
    assert bus.unconfirmed.nbytes == 0


def test_a_confirm_that_does_not_decode_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    bus = core()
    bad = encode_frame(
        CONFIRM_CHANNEL, origin=b"bridge", host=b"h", epoch=1, seq=1, time=0.0,
        codec=Codec.RAW, payload=b"\x09", target="me",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert bus.accept(bad) is None
    assert bus.stats()["undecodable"] == 1 and "confirm" in caplog.text


# -- send credit (send_queue_bytes) ------------------------------------------------


def test_credit_is_exhausted_past_the_limit_and_a_marker_gives_it_back() -> None:
    credit = SendCredit(1000)
    credit.sent = 1000
    assert not credit.exhausted, "up to the limit, publish goes on"
    credit.sent = 1001
    assert credit.exhausted
    token = credit.marker_token(now=5.0)
    assert token.startswith(CREDIT_PREFIX) and credit.asked_at == 5.0 and credit.markers == 1
    assert credit.next_mark == 1001 + 250, "the next marker is a quarter of the limit later"
    assert credit.marker_back(token)
    assert credit.read == 1001 and credit.unread == 0 and not credit.exhausted


def test_credit_ignores_foreign_stale_and_impossible_markers() -> None:
    mine, other = SendCredit(100), SendCredit(100)
    mine.sent = other.sent = 500
    old = mine.marker_token(0.0)
    mine.sent = 800
    new = mine.marker_token(0.0)
    assert not mine.marker_back(other.marker_token(0.0)), "another worker's key"
    assert not mine.marker_back(b"\x00" * 8), "a sync or flush token"
    assert mine.marker_back(new) and mine.read == 800
    assert mine.marker_back(old) and mine.read == 800, "an older marker never goes back"
    forged = new[:-8] + (10**9).to_bytes(8, "big")
    assert mine.marker_back(forged) and mine.read == 800, "more than was sent is refused"


def test_a_marker_that_met_a_full_pipe_is_due_again_at_once() -> None:
    credit = SendCredit(100)
    credit.sent = 30
    credit.marker_token(1.0)
    credit.marker_lost()
    assert credit.next_mark == credit.sent and credit.asked_at == float("-inf")


def test_a_credit_marker_is_a_flush_marker_to_ourselves_that_gives_credit_back() -> None:
    bus = BusCore(
        ClientOptions.resolve(dir="/nonexistent", host="h", worker="w", send_queue_bytes=1000),
        None,
        1,
    )
    tokens: list[bytes] = []
    bus.on_flush = tokens.append
    bus.credit.sent = 1500
    assert bus.credit.exhausted
    assert bus.accept(bus.credit_frame(now=2.0, wall=1.0)) is None
    assert len(tokens) == 1 and bus.credit.marker_back(tokens[0])
    assert bus.credit.read == 1500 and not bus.credit.exhausted
