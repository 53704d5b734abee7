"""The clients' I/O-free core: batching on the way out, batches on the way in."""

from __future__ import annotations

import time
from typing import Any

import pytest

from circus_events import Gap, MessageTooLarge
from circus_events._client_core import (
    BATCH_MAX_COUNT,
    BATCH_MAX_WAIT,
    BURST_MEMORY,
    BURST_MIN,
    HOT_GAP,
    BusCore,
    ClientOptions,
    Subscriber,
)
from circus_events.protocol import Codec, Pattern, decode_frame, encode_batch


def core(worker: str, *, gaps: list[Gap] | None = None, **options: Any) -> BusCore:
    resolved = ClientOptions.resolve(dir="/nonexistent", host="h", worker=worker, **options)
    return BusCore(resolved, gaps.append if gaps is not None else None)


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
        assert publisher.hold(publisher.prepare("ch", b"%d" % n, "cluster"))
    frame = publisher.batch_frame()
    publisher.batch_sent()
    assert publisher.batch is None
    receiver = core("sub")
    events = receiver.accept(frame)
    assert [(e.seq, e.payload, e.channel, e.origin) for e in events or []] == [
        (1, b"0", "ch", "pub"), (2, b"1", "ch", "pub"), (3, b"2", "ch", "pub"),
    ]  # fmt: skip
    # The numbering goes on after the batch, whichever way the next one leaves.
    single = publisher.single_frame(publisher.prepare("ch", b"3", "cluster"))
    assert decode_frame(single).seq == 4
    assert publisher.stats()["published"] == 3


def test_a_batch_takes_only_its_own_kind_and_only_while_there_is_room() -> None:
    publisher = core("pub", codec="raw", max_message_bytes=10_000)
    assert publisher.hold(publisher.prepare("ch", b"x", "cluster"))
    assert not publisher.hold(publisher.prepare("other", b"x", "cluster"))
    assert not publisher.hold(publisher.prepare("ch", b"x", "host"))
    assert not publisher.hold(publisher.prepare("ch", b"x", "cluster", target="w2"))
    assert not publisher.hold(publisher.prepare("ch", b"x" * 9950, "cluster"))  # past the size
    assert publisher.batch is not None and len(publisher.batch.payloads) == 1
    publisher.batch_sent()
    for _ in range(BATCH_MAX_COUNT):
        assert publisher.hold(publisher.prepare("ch", b"", "cluster"))
    assert publisher.batch.full
    assert not publisher.hold(publisher.prepare("ch", b"", "cluster"))
    assert len(publisher.batch_frame()) <= 10_000


def test_a_batch_frame_never_exceeds_max_message_bytes() -> None:
    publisher = core("pub", codec="raw", max_message_bytes=1024)
    held = 0
    while publisher.hold(publisher.prepare("ch", b"y" * 40, "cluster")):
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
    publisher.hold(publisher.prepare("ch", b"a", "cluster"))
    publisher.hold(publisher.prepare("ch", b"b", "cluster"))
    frame = publisher.batch_frame()
    assert publisher.accept(frame) is None
    echoing = core("pub", codec="raw", echo=True)
    echoing.hold(echoing.prepare("ch", b"a", "cluster"))
    echoing.hold(echoing.prepare("ch", b"b", "cluster"))
    assert seqs(echoing.accept(echoing.batch_frame())) == [1, 2]


def test_subscribers_loading_history_hold_a_whole_batch() -> None:
    receiver = core("sub")
    loading = Subscriber(Pattern("ch"), lambda event: None)
    ready = Subscriber(Pattern("c*"), lambda event: None)
    receiver.add(loading)
    receiver.add(ready)
    receiver.add_history(loading, 5, None)
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
    publisher.hold(publisher.prepare("ch", b"x", "cluster"))  # a batch opens
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
    publisher.hold(publisher.prepare("ch", b"x", "cluster"))
    # Publishing goes on: not due, until the batch is BATCH_MAX_WAIT old.
    now = opened + HOT_GAP / 2
    while now - opened < BATCH_MAX_WAIT:
        assert not publisher.batch_due(now)
        publisher.last_publish = now
        now += HOT_GAP / 2
    assert publisher.batch_due(now)
    # A pause of HOT_GAP after the last publish: due, however young the batch.
    publisher.batch_sent()
    publisher.hold(publisher.prepare("ch", b"y", "cluster"))
    assert not publisher.batch_due(publisher.last_publish)
    assert publisher.batch_due(publisher.last_publish + HOT_GAP)


def test_batched_messages_carry_their_own_publish_times() -> None:
    publisher = core("pub", codec="raw")
    before = time.time()
    publisher.last_publish = time.monotonic()
    assert publisher.hold(publisher.prepare("ch", b"a", "cluster"))
    for payload in (b"b", b"c"):
        assert publisher.join("ch", payload, "cluster", time.monotonic())
    after = time.time()
    events = core("sub").accept(publisher.batch_frame()) or []
    times = [event.time for event in events]
    assert [event.payload for event in events] == [b"a", b"b", b"c"]
    assert before - 0.001 <= times[0] <= times[1] <= times[2] <= after + 0.001
