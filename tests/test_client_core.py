"""The clients' I/O-free core: batching on the way out, batches on the way in."""

from __future__ import annotations

import collections
import errno
import math
import time
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from circus_events import (
    GAP_QUEUE_FULL,
    ArgumentError,
    BridgeError,
    BusClosed,
    ChannelError,
    ConfigError,
    Gap,
    MessageTooLarge,
)
from circus_events._client.driver import history_token, new_epoch
from circus_events._client_core import (
    BATCH_MAX_COUNT,
    BATCH_MAX_WAIT,
    BURST_MEMORY,
    BURST_MIN,
    EVENT_OVERHEAD_BYTES,
    HOT_GAP,
    MAX_TIMEOUT,
    BusCore,
    ClientOptions,
    QueueBound,
    Subscriber,
    check_timeout,
    compile_pattern,
    history_args,
    or_forever,
    transport_error,
)
from circus_events.protocol import (
    FLAG_HOST_ONLY,
    Codec,
    Pattern,
    decode_frame,
    encode_batch,
    encode_frame,
    split_frame,
)
from circus_events.protocol.pacing import build_pace_ack, build_pace_marker, parse_pace_ack


def core(worker: str, *, gaps: list[Gap] | None = None, **options: Any) -> BusCore:
    resolved = ClientOptions.resolve(dir="/nonexistent", host="h", worker=worker, **options)
    return BusCore(resolved, gaps.append if gaps is not None else None, new_epoch())


def batch(
    first_seq: int, payloads: list[bytes], *, origin: bytes = b"pub", epoch: int = 1
) -> bytes:
    return encode_batch(
        "ch", origin=origin, host=b"h", epoch=epoch, first_seq=first_seq,
        times=[1.0] * len(payloads), codec=Codec.RAW, payloads=payloads,
    )  # fmt: skip


def seqs(events: list[Any] | None) -> list[int]:
    return [event.seq for event in events or []]


def test_held_messages_leave_as_one_numbered_batch() -> None:
    publisher = core("pub", codec="raw")
    for n in range(3):
        assert publisher.hold(publisher.prepare("ch", b"%d" % n, "cluster"), time.time())
    frame = publisher.batch_frame()
    publisher.batch_sent()
    assert publisher.batch is None
    receiver = core("sub")
    events = receiver.accept(frame)
    assert [(e.seq, e.payload, e.channel, e.origin) for e in events or []] == [
        (1, b"0", "ch", "pub"), (2, b"1", "ch", "pub"), (3, b"2", "ch", "pub"),
    ]  # fmt: skip
    # The numbering goes on after the batch, whichever way the next one leaves.
    single = publisher.single_frame(publisher.prepare("ch", b"3", "cluster"), time.time())
    assert decode_frame(single).seq == 4
    assert publisher.stats()["published"] == 3


def test_a_batch_takes_only_its_own_kind_and_only_while_there_is_room() -> None:
    publisher = core("pub", codec="raw", max_message_bytes=10_000)
    assert publisher.hold(publisher.prepare("ch", b"x", "cluster"), time.time())
    assert not publisher.hold(publisher.prepare("other", b"x", "cluster"), time.time())
    assert not publisher.hold(publisher.prepare("ch", b"x", "host"), time.time())
    assert not publisher.hold(publisher.prepare("ch", b"x", "cluster", target="w2"), time.time())
    big = publisher.prepare("ch", b"x" * 9950, "cluster")
    assert not publisher.hold(big, time.time())  # past the size
    assert publisher.batch is not None and len(publisher.batch.payloads) == 1
    publisher.batch_sent()
    for _ in range(BATCH_MAX_COUNT):
        assert publisher.hold(publisher.prepare("ch", b"", "cluster"), time.time())
    assert publisher.batch.full
    assert not publisher.hold(publisher.prepare("ch", b"", "cluster"), time.time())
    assert len(publisher.batch_frame()) <= 10_000


def test_a_batch_frame_never_exceeds_max_message_bytes() -> None:
    publisher = core("pub", codec="raw", max_message_bytes=1024)
    held = 0
    while publisher.hold(publisher.prepare("ch", b"y" * 40, "cluster"), time.time()):
        held += 1
    assert held > 1
    assert not publisher.batch.full or len(publisher.batch_frame()) > 1024 - 52
    assert len(publisher.batch_frame()) <= 1024
    with pytest.raises(MessageTooLarge):
        publisher.prepare("ch", b"y" * 1024, "cluster")


def test_repeats_inside_a_batch_are_dropped_and_holes_reported() -> None:
    gaps: list[Gap] = []
    receiver = core("sub", gaps=gaps)
    assert seqs(receiver.accept(batch(1, [b"a", b"b", b"c"]))) == [1, 2, 3]
    assert receiver.accept(batch(1, [b"a", b"b", b"c"])) is None  # a whole replay
    assert seqs(receiver.accept(batch(3, [b"c", b"d"]))) == [4]  # partly new
    assert seqs(receiver.accept(batch(7, [b"g", b"h"]))) == [7, 8]
    assert gaps == [Gap("pub", "h", "ch", 2, 7)]
    assert receiver.stats()["received"] == 6
    assert receiver.stats()["duplicates"] == 4


def test_own_batches_are_not_echoed_unless_asked() -> None:
    publisher = core("pub", codec="raw")
    publisher.hold(publisher.prepare("ch", b"a", "cluster"), time.time())
    publisher.hold(publisher.prepare("ch", b"b", "cluster"), time.time())
    frame = publisher.batch_frame()
    assert publisher.accept(frame) is None
    echoing = core("pub", codec="raw", echo=True)
    echoing.hold(echoing.prepare("ch", b"a", "cluster"), time.time())
    echoing.hold(echoing.prepare("ch", b"b", "cluster"), time.time())
    assert seqs(echoing.accept(echoing.batch_frame())) == [1, 2]


def test_subscribers_loading_history_hold_a_whole_batch() -> None:
    receiver = core("sub")
    loading = Subscriber(Pattern("ch"), lambda event: None)
    ready = Subscriber(Pattern("c*"), lambda event: None)
    receiver.add(loading)
    receiver.add(ready)
    receiver.add_history(loading, 5, None, history_token(), time.monotonic())
    events = receiver.accept(batch(1, [b"a", b"b"]))
    assert events is not None
    assert receiver.route(events) == [ready]
    assert loading.history is not None and loading.history.held == events


def test_a_burst_is_held_after_burst_min_quick_follow_ups_and_at_once_after_a_pause() -> None:
    publisher = core("pub", codec="raw")
    now = 100.0
    held = []
    for _ in range(BURST_MIN + 2):
        now += HOT_GAP / 2
        held.append(publisher.in_burst(now))
    # The first publish starts the burst; holding starts at the BURST_MIN-th after it.
    assert held == [False] * BURST_MIN + [True] * 2
    publisher.hold(publisher.prepare("ch", b"x", "cluster"), time.time())  # a batch opens
    publisher.batch_sent()
    now += BURST_MEMORY / 2  # preempted, not idle: the next burst batches at once
    assert not publisher.in_burst(now)
    assert publisher.in_burst(now + HOT_GAP / 2)
    now += 1.0  # idle: a new burst must prove itself again
    assert [publisher.in_burst(now + i * HOT_GAP / 2) for i in range(3)] == [False] * 3


def test_a_filling_batch_is_due_when_its_publisher_pauses_or_it_is_old() -> None:
    """The receiver thread sends a held batch only then: cutting batches that
    still fill made frames three times as many at full speed."""
    publisher = core("pub", codec="raw")
    opened = 100.0
    for i in range(BURST_MIN + 1):
        publisher.in_burst(opened - (BURST_MIN - i) * HOT_GAP / 2)
    publisher.hold(publisher.prepare("ch", b"x", "cluster"), time.time())
    # Publishing goes on: not due, until the batch is BATCH_MAX_WAIT old.
    now = opened + HOT_GAP / 2
    while now - opened < BATCH_MAX_WAIT:
        assert not publisher.batch_due(now)
        publisher.last_publish = now
        now += HOT_GAP / 2
    assert publisher.batch_due(now)
    # A pause of HOT_GAP after the last publish: due, however young the batch.
    publisher.batch_sent()
    publisher.hold(publisher.prepare("ch", b"y", "cluster"), time.time())
    assert not publisher.batch_due(publisher.last_publish)
    assert publisher.batch_due(publisher.last_publish + HOT_GAP)


def test_batched_messages_carry_their_own_publish_times() -> None:
    publisher = core("pub", codec="raw")
    before = time.time()
    publisher.last_publish = time.monotonic()
    assert publisher.hold(publisher.prepare("ch", b"a", "cluster"), time.time())
    for payload in (b"b", b"c"):
        assert publisher.join("ch", payload, "cluster", time.monotonic())
    after = time.time()
    events = core("sub").accept(publisher.batch_frame()) or []
    times = [event.time for event in events]
    assert [event.payload for event in events] == [b"a", b"b", b"c"]
    assert before - 0.001 <= times[0] <= times[1] <= times[2] <= after + 0.001


# -- subscription queues: QueueBound ---------------------------------------------------


def frame_events(origin: str, first_seq: int, count: int, channel: str = "ch") -> list[Any]:
    """``count`` events of one frame (one envelope), as BusCore.accept makes them."""
    frame = encode_batch(
        channel, origin=origin.encode(), host=b"h", epoch=1, first_seq=first_seq,
        times=[1.0] * count, codec=Codec.RAW, payloads=[b"p"] * count,
    )  # fmt: skip
    return core("reader").accept(frame) or []


@pytest.mark.parametrize(
    ("max_events", "max_bytes", "queued", "count", "nbytes", "taken"),
    [
        (10, 1000, 0, 5, 100, 5),  # fits
        (10, 1000, 5, 5, 100, 5),  # exactly at the event limit
        (10, 1000, 6, 5, 100, 4),  # past it: the first four
        (10, 1000, 10, 5, 100, 0),  # full
        (100, 1000, 0, 10, 1000, 10),  # exactly at the byte limit
        (100, 1000, 0, 10, 1001, 9),  # past it by one byte: nine of 100.1 each
        (100, 1000, 0, 1, 5000, 1),  # an empty queue takes one event, however large
        (100, 1000, 0, 4, 5000, 1),  # ... but only one
        (100, 1000, 0, 3, 0, 3),  # empty payloads cost events only
    ],
)
def test_a_queue_bound_admits_what_fits_by_events_and_bytes(
    max_events: int, max_bytes: int, queued: int, count: int, nbytes: int, taken: int
) -> None:
    bound = QueueBound("p", max_events, max_bytes, [], per_event=0)
    bound._appended = queued  # ``queued`` events appended earlier, of no size
    assert bound.admit(count, nbytes, queued) == taken


def test_a_queue_bound_learns_what_was_taken_from_the_queue_length() -> None:
    bound = QueueBound("p", 100, 1000, [], per_event=0)
    assert bound.admit(2, 400, 0) == 2
    assert bound.admit(2, 400, 2) == 2
    assert bound.queued_bytes(4) == 800
    assert bound.admit(2, 400, 4) == 1  # 200 bytes of room: one of 200
    assert bound.queued_bytes(5) == 1000
    # The reader took three: the first frame is gone, the second is half taken
    # and still counts whole (at most one frame too many).
    assert bound.queued_bytes(2) == 600
    assert bound.admit(1, 400, 2) == 1
    assert bound.queued_bytes(0) == 0


def test_a_queue_bound_reports_each_drop_once_per_origin_and_channel() -> None:
    report_to: list[QueueBound] = []
    bound = QueueBound("c*", 3, 10**6, report_to, per_event=0)
    a1, a2, b1 = frame_events("a", 1, 5), frame_events("a", 6, 5), frame_events("b", 1, 4, "cx")
    assert bound.admit(5, 50, 0) == 3
    bound.drop(a1[-1], 2)
    assert report_to == [bound]
    assert bound.admit(5, 50, 3) == 0
    bound.drop(a2[-1], 5)
    bound.drop(b1[-1], 4)
    assert report_to == [bound], "listed once until reported"
    assert bound.take_gaps() == [
        Gap("a", "h", "ch", 7, 10, "c*", GAP_QUEUE_FULL),
        Gap("b", "h", "cx", 4, 4, "c*", GAP_QUEUE_FULL),
    ]
    assert bound.take_gaps() == []
    assert bound.dropped == 11


def test_each_event_costs_its_overhead_besides_its_bytes() -> None:
    bound = QueueBound("p", 100, 1000, [], per_event=100)
    assert bound.admit(5, 500, 0) == 5  # 500 + 5 x 100: exactly full
    assert bound.queued_bytes(5) == 1000
    assert bound.admit(1, 0, 5) == 0
    assert QueueBound("p", 1, 1, []).per_event == EVENT_OVERHEAD_BYTES


def test_the_bus_reports_drops_through_on_gap_and_stats() -> None:
    gaps: list[Gap] = []
    receiver = core("sub", gaps=gaps)
    bound = receiver.new_bound(Pattern("ch"), 2, None)
    assert (bound.max_events, bound.max_bytes) == (2, receiver.options.queue_max_bytes)
    events = frame_events("pub", 1, 5)
    taken = bound.admit(5, 100, 0)
    bound.drop(events[-1], 5 - taken)
    receiver.report_drops()
    assert gaps == [Gap("pub", "h", "ch", 3, 5, "ch", "queue_full")]
    assert receiver.stats()["dropped"] == 3
    receiver.report_drops()
    assert len(gaps) == 1


@given(
    st.lists(
        st.tuples(st.integers(1, 300), st.integers(0, 5000), st.integers(0, 400)), max_size=60
    ),
    st.integers(1, 500),
    st.integers(1, 20_000),
)
def test_a_queue_bound_against_a_model(
    steps: list[tuple[int, int, int]], max_events: int, max_bytes: int
) -> None:
    """Frames in, readers out, in any order: never past either bound (but for
    one event into an empty queue), a partly read frame counted whole, and
    every event offered either queued or counted as dropped."""
    bound = QueueBound("p", max_events, max_bytes, [], per_event=0)
    frames: collections.deque[list[int]] = collections.deque()  # [events left, bytes]
    offered = queued = admitted = 0
    for count, nbytes, reads in steps:
        for _ in range(min(reads, queued)):  # a reader takes events, oldest first
            frames[0][0] -= 1
            queued -= 1
            if not frames[0][0]:
                frames.popleft()
        assert bound.queued_bytes(queued) == sum(size for _, size in frames)
        was_empty = queued == 0
        taken = bound.admit(count, nbytes, queued)
        assert 0 <= taken <= count
        assert taken >= 1 or not was_empty
        if taken:
            frames.append([taken, -(-nbytes * taken // count)])
            queued += taken
        total = sum(size for _, size in frames)
        assert bound.queued_bytes(queued) == total
        if taken and not (was_empty and taken == 1):
            assert queued <= max_events and total <= max_bytes
        if taken < count:
            bound.drop(frame_events("o", offered + count, 1)[-1], count - taken)
        offered += count
        admitted += taken
    assert admitted + bound.dropped == offered


# -- subscription changes leave as their net change -----------------------------------


def test_a_subscribe_and_a_close_together_send_nothing() -> None:
    bus = core("w")
    first = Subscriber(Pattern("a"), print)
    bus.add(first)
    bus.remove(first)
    assert bus.take_outbox() == []
    bus.add(first)
    bus.outbox.append(b"request")
    assert bus.take_outbox() == [b"\x01a\x00", b"request"], "subscriptions before requests"
    second = Subscriber(Pattern("a"), print)
    bus.add(second)
    bus.remove(first)
    assert bus.take_outbox() == [], "still wanted by the second"
    assert not bus.remove(first), "removing twice"
    bus.remove(second)
    bus.add(Subscriber(Pattern("b*"), print))
    assert bus.take_outbox() == [b"\x00a\x00", b"\x01b"]
    assert list(bus.subscribers) != [] and not bus.outbox_pending


# -- arguments checked at the boundary ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), (1, 1.0), (0.5, 0.5), ("1", ArgumentError), (-1, ArgumentError),
     (math.nan, ArgumentError), (math.inf, ArgumentError), (True, ArgumentError),
     (MAX_TIMEOUT, MAX_TIMEOUT), (MAX_TIMEOUT + 1, ArgumentError), (1e30, ArgumentError)],
)  # fmt: skip
def test_check_timeout(value: Any, expected: Any) -> None:
    assert or_forever(None) == MAX_TIMEOUT and or_forever(2.0) == 2.0
    if expected is ArgumentError:
        with pytest.raises(ArgumentError, match="timeout"):
            check_timeout("timeout", value)
    else:
        assert check_timeout("timeout", value) == expected


@pytest.mark.parametrize(
    ("history", "since", "expected"),
    [(None, None, None), (0, None, (0, None)), (5, 1.5, (5, 1500)), (None, -3, (None, 0)),
     (-1, None, "history"), ("5", None, "history"), (True, None, "history"),
     (None, "x", "since"), (None, math.nan, "since"), (None, math.inf, "since")],
)  # fmt: skip
def test_history_args(history: Any, since: Any, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(ArgumentError, match=expected):
            history_args(history, since)
    else:
        assert history_args(history, since) == expected


def test_patterns_compile_once_and_bad_ones_raise_channel_errors() -> None:
    assert compile_pattern("orders.*") is compile_pattern("orders.*")
    for bad in (123, None, "", "a[", "@system"):
        with pytest.raises(ChannelError):
            compile_pattern(bad)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"queue_size": 0}, "queue_size"), ({"queue_max_bytes": 1.5}, "queue_max_bytes"),
     ({"send_queue": True}, "send_queue"), ({"send_queue_bytes": 0}, "send_queue_bytes"),
     ({"publish_timeout": math.nan}, "publish_timeout")],
)  # fmt: skip
def test_bus_options_name_the_bad_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        core("w", **options)
    assert error.value.key == key
    with pytest.raises(ArgumentError) as bad:
        core("w").options.queue_limits(0, None)  # subscribe(queue_size=0)
    assert bad.value.name == "queue_size"


def test_transport_errors_become_bus_closed_or_bridge_error() -> None:
    closed = zmq.ZMQError(errno.ENOTSOCK)
    assert isinstance(transport_error(closed, False), BusClosed)
    assert isinstance(transport_error(zmq.ZMQError(zmq.ETERM), False), BusClosed)
    assert isinstance(transport_error(zmq.ZMQError(errno.EINVAL), True), BusClosed)
    failed = transport_error(zmq.ZMQError(errno.EINVAL), False)
    assert isinstance(failed, BridgeError) and "Invalid argument" in str(failed)


def test_live_events_held_while_history_loads_stay_within_the_bounds() -> None:
    gaps: list[Gap] = []
    receiver = core("sub", gaps=gaps)
    bound = receiver.new_bound(Pattern("ch"), 3, None)
    loading = Subscriber(Pattern("ch"), print, sink_many=lambda events, size: None, bound=bound)
    handler = Subscriber(Pattern("ch"), print)
    receiver.add(loading)
    receiver.add(handler)
    receiver.add_history(loading, 5, None, history_token(), time.monotonic())
    receiver.add_history(handler, 5, None, history_token(), time.monotonic())
    assert receiver.route(frame_events("pub", 1, 5)) == []
    assert loading.history is not None and len(loading.history.held) == 3
    receiver.report_drops()
    assert gaps == [Gap("pub", "h", "ch", 2, 5, "ch", GAP_QUEUE_FULL)]
    assert handler.history is not None and len(handler.history.held) == 5  # DEFAULT_QUEUE_SIZE


def test_a_large_message_in_pieces_becomes_one_event_and_a_lost_piece_a_gap() -> None:
    gaps: list[Gap] = []
    receiver = core("rx", gaps=gaps)

    def pieces(seq: int) -> list[bytes]:
        frame = encode_frame(
            "big",
            origin=b"tx",
            host=b"h",
            epoch=1,
            seq=seq,
            time=0.0,
            codec=0,
            payload=b"x" * 60_000,
        )
        return split_frame(frame)

    first = pieces(1)
    assert [receiver.accept(p) for p in first[:-1]] == [None] * (len(first) - 1)
    assert seqs(receiver.accept(first[-1])) == [1]
    receiver.accept(pieces(2)[0])  # the rest of message 2 lost in a full pipe
    assert seqs([e for p in pieces(3) for e in receiver.accept(p) or []]) == [3]
    assert [(g.missed, g.channel) for g in gaps] == [(1, "big")]
    assert receiver.undecodable == 0


def test_a_malformed_piece_is_counted_never_raised() -> None:
    receiver = core("rx")
    assert receiver.accept(b"big\0\xc1" + bytes(8)) is None
    assert receiver.undecodable == 1


def test_a_pace_marker_is_acknowledged_up_the_subscription_socket() -> None:
    bus = core("reader")
    assert bus.accept(build_pace_marker(12345)) is None
    ack = bus.take_outbox()
    assert ack == [build_pace_ack(12345, bus.pace_key)]
    assert parse_pace_ack(ack[0]) == (12345, bus.pace_key)
    assert bus.undecodable == 0
    # Each bus's socket has a key of its own, worker id first.
    other = core("reader")
    assert other.pace_key != bus.pace_key and other.pace_key.startswith(b"reader")


def large(seq: int, *, origin: bytes = b"tx", epoch: int = 1, **fields: Any) -> list[bytes]:
    """A 60 kB message's pieces (``fields``: flags, target... as encode_frame takes)."""
    channel = fields.pop("channel", "big")
    frame = encode_frame(
        channel, origin=origin, host=b"h", epoch=epoch, seq=seq, time=0.0, codec=0,
        payload=b"x" * 60_000, **fields,
    )  # fmt: skip
    return split_frame(frame)


def take_all(receiver: BusCore, pieces: list[bytes]) -> list[Any]:
    return [e for p in pieces for e in receiver.accept(p) or []]


def test_a_large_broadcast_is_joined_once_and_checked_like_any_message() -> None:
    gaps: list[Gap] = []
    receiver = core("rx", gaps=gaps)
    (event,) = take_all(receiver, large(1))
    assert event.payload == b"x" * 60_000 and type(event.payload) is bytes
    assert take_all(receiver, large(1)) == []  # a repeat
    assert seqs(take_all(receiver, large(3))) == [3]  # 2 lost: a gap
    assert [(g.missed, g.seq) for g in gaps] == [(1, 3)]
    # Host-scoped messages number apart from cluster ones.
    assert seqs(take_all(receiver, large(1, flags=FLAG_HOST_ONLY))) == [1]
    # Its own, not echoed unless asked.
    assert take_all(receiver, large(1, origin=b"rx", epoch=receiver.epoch)) == []
    assert receiver.received == 3 and receiver.undecodable == 0


def test_other_large_frames_are_joined_whole_and_accepted() -> None:
    receiver = core("rx")
    (event,) = take_all(receiver, large(1, channel="chat", target="rx"))
    assert event.channel == "chat" and len(event.payload) == 60_000
    # A first piece whose header does not decode: refused as the whole frame would be.
    bad = large(2)
    end = bad[0].index(b"\0") + 1 + 9  # the topic, then the piece's own header
    bad[0] = bad[0][:end] + b"\x09" + bad[0][end + 1 :]  # message version 9
    assert take_all(receiver, bad) == []
    assert receiver.undecodable == 1
