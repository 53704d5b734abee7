"""The local bus against a real bridge process and real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import AsyncioThread, BridgeProcess, WorkerProcess, wait_until

from circus_events import AsyncBus, AsyncSubscription, Bus, BusClosed, Event, Gap, Subscription, aio

CHANNELS = "orders.paid,orders.refunded,users.created"


def test_one_publisher_eight_subscribers_in_order_exactly_once(
    bridge: BridgeProcess, workers: Callable[..., WorkerProcess]
) -> None:
    total = 10_000
    subscribers = [
        workers(
            "subscriber.py",
            "--dir", str(bridge.directory),
            "--worker", f"sub-{n}",
            "--kind", "sync" if n % 2 else "async",
            "--count", str(total),
        )
        for n in range(8)
    ]  # fmt: skip
    pattern = workers(
        "subscriber.py",
        "--dir", str(bridge.directory),
        "--worker", "pattern-sub",
        "--pattern", "orders.*",
        "--idle", "3",
    )  # fmt: skip
    for worker in [*subscribers, pattern]:
        worker.expect_line("READY")
    publisher = workers(
        "publisher.py",
        "--dir",
        str(bridge.directory),
        "--count",
        str(total),
        "--channels",
        CHANNELS,
    )
    publisher.expect_line("DONE", timeout=60)
    expected = [[CHANNELS.split(",")[i % 3], {"i": i}] for i in range(total)]
    for worker in subscribers:
        result = worker.result()
        assert result["missed"] == 0, (worker.process.args, result["gaps"][:5])
        assert result["events"] == expected  # all, in order, none twice
    matching = pattern.result()
    assert matching["events"] == [e for e in expected if e[0].startswith("orders.")]
    counters = bridge.counters()
    assert counters["accepted"] == total + 1  # and the publisher's flush marker
    assert counters["rejected_malformed"] == counters["rejected_oversized"] == 0


def _drain(subscription: Subscription, idle: float = 0.3) -> list[Event]:
    """Everything that arrives until nothing has for ``idle`` seconds."""
    events = []
    while True:
        try:
            events.append(subscription.get(timeout=idle))
        except queue.Empty:
            return events


def test_echo_off_by_default_and_scopes(bridge: BridgeProcess) -> None:
    with (
        Bus(dir=str(bridge.directory), worker="a") as a,
        Bus(dir=str(bridge.directory), worker="a-echo", echo=True) as a_echo,
        Bus(dir=str(bridge.directory), worker="b") as b,
    ):
        own = a.subscribe("news")
        own_echo = a_echo.subscribe("news")
        other = b.subscribe("news")
        assert a.sync() and a_echo.sync() and b.sync()

        a.publish("news", "cluster")
        a_echo.publish("news", "echoed")
        a.publish("news", "host-only", scope="host")
        a.publish("news", "in-process", scope="process")
        assert a.flush() and a_echo.flush()

        # (two publishers: no order between them, only within each)
        assert sorted(e.data for e in _drain(other)) == ["cluster", "echoed", "host-only"]
        # a gets no echo of its own publications (but a_echo's, and its in-process one).
        assert sorted(e.data for e in _drain(own)) == ["echoed", "in-process"]
        # a_echo asked for echo: it sees its own publication too.
        assert sorted(e.data for e in _drain(own_echo)) == ["cluster", "echoed", "host-only"]


def test_process_scope_never_reaches_the_bridge(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory), worker="a") as a:
        local = a.subscribe("local.*")
        before = bridge.counters()["accepted"]
        for n in range(100):
            a.publish("local.tick", n, scope="process")
        assert [e.data for e in _drain(local)] == list(range(100))
        assert bridge.counters()["accepted"] == before


def test_send_to_reaches_exactly_the_named_worker(bridge: BridgeProcess) -> None:
    directory = str(bridge.directory)
    with (
        Bus(dir=directory, worker="sender") as sender,
        Bus(dir=directory, worker="w1") as w1,
        Bus(dir=directory, worker="w2") as w2,
        AsyncioThread() as loop,
    ):
        w1_inbox, w2_inbox = w1.subscribe("jobs"), w2.subscribe("jobs")
        w3 = loop.run(_async_bus(directory, "w3"))
        w3_inbox = loop.run(_async_subscribe(w3, "jobs"))
        assert w1.sync() and w2.sync()
        sender.send_to("w2", "jobs", {"job": 1})
        sender.send_to("w3", "jobs", {"job": 2})
        sender.send_to("nobody", "jobs", {"job": 3})
        assert sender.flush()
        assert [e.data for e in _drain(w2_inbox)] == [{"job": 1}]
        assert loop.run(w3_inbox.get(timeout=5)).data == {"job": 2}
        assert _drain(w1_inbox) == []
        assert all(e.direct for e in _drain(w2_inbox, 0.05))
        loop.run(w3.close())


async def _async_bus(directory: str, worker: str) -> AsyncBus:
    return await AsyncBus(dir=directory, worker=worker).start()


async def _async_subscribe(bus: AsyncBus, pattern: str, **options: Any) -> AsyncSubscription:
    subscription = bus.subscribe(pattern, **options)
    assert await bus.sync()
    return subscription


def test_bridge_killed_and_restarted_workers_carry_on_and_learn_the_gap(
    bridge: BridgeProcess,
) -> None:
    gaps: list[Gap] = []
    received: list[int] = []
    directory = str(bridge.directory)
    with (
        Bus(dir=directory, worker="pub") as publisher,
        Bus(dir=directory, worker="sub", on_gap=gaps.append) as subscriber,
    ):
        subscriber.on("ticks")(lambda event: received.append(event.data))
        assert subscriber.sync()
        sent = 0
        for _ in range(20_000):  # a burst, so the bridge dies with some in hand
            publisher.publish("ticks", sent)
            sent += 1
        bridge.kill()
        for _ in range(100):  # queued in the worker while no bridge runs
            publisher.publish("ticks", sent)
            sent += 1
        bridge.start()
        assert subscriber.sync(10), "the worker did not reconnect to the new bridge"
        for _ in range(100):
            publisher.publish("ticks", sent)
            sent += 1
        assert publisher.flush(10)
        wait_until(lambda: received and received[-1] == sent - 1, 10, "the last message")
        assert received == sorted(set(received)), "in order, none twice"
        # Every message either arrived or was reported missing.
        assert len(received) + sum(g.missed for g in gaps) == sent


def test_stuck_subscriber_does_not_slow_the_others(
    bridge_factory: Callable[..., BridgeProcess], workers: Callable[..., WorkerProcess]
) -> None:
    # A small per-subscriber limit, so the stuck worker overflows quickly; the
    # publisher paces itself so healthy workers on a busy 2-core CI box keep up.
    bridge = bridge_factory(args=("--subscriber-hwm", "2000"))
    total = 20_000
    stuck = workers(
        "subscriber.py", "--dir", str(bridge.directory), "--worker", "stuck", "--stop-on", "STOP"
    )
    healthy = [
        workers(
            "subscriber.py",
            "--dir", str(bridge.directory),
            "--worker", f"ok-{n}",
            "--count", str(total),
        )
        for n in range(2)
    ]  # fmt: skip
    for worker in [stuck, *healthy]:
        worker.expect_line("READY")
    stuck.process.send_signal(signal.SIGSTOP)  # never reads, as a hung worker
    with Bus(dir=str(bridge.directory), worker="publisher") as publisher:
        start = time.monotonic()
        for n in range(total):
            pause = start + n / 5000 - time.monotonic()  # 5,000 msg/s
            if pause > 0:
                time.sleep(pause)  # pacing the publisher, not synchronisation
            publisher.publish("orders.paid", {"i": n})
        assert publisher.flush()
        for worker in healthy:
            result = worker.result()
            assert result["missed"] == 0
            assert [e[1]["i"] for e in result["events"]] == list(range(total))
        stuck.process.send_signal(signal.SIGCONT)
        # More after it wakes, so it can see the hole: repeated, because the
        # first ones may meet its still-full queue and be dropped too.
        # Until it writes its summary (got STOP), not until it exits: a summary
        # larger than the pipe keeps it alive until result() reads it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            publisher.publish("orders.paid", "STOP")
            if select.select([stuck.process.stdout], [], [], 0.05)[0]:
                break
    result = stuck.result()
    assert result["events"][-1][1] == "STOP"
    received = [e[1]["i"] for e in result["events"][:-1] if e[1] != "STOP"]
    assert result["missed"] > 0, "the stuck worker is told it missed messages"
    assert received == sorted(set(received))
    # Every message before the STOP it read either reached it or is in its gap reports.
    assert len(result["events"]) + result["missed"] == result["last_seq"]


def test_a_burst_travels_in_batches_and_arrives_one_by_one_in_order(
    bridge: BridgeProcess,
) -> None:
    """Publishing faster than one frame per message pays off packs messages into
    batch frames; every subscriber kind still gets each message once, in order."""
    total = 20_000
    directory = str(bridge.directory)
    handled: list[int] = []
    with (
        Bus(dir=directory, worker="burst-iter") as reader,
        Bus(dir=directory, worker="burst-handler") as handler_bus,
        Bus(dir=directory, worker="burst-pub") as publisher,
        AsyncioThread() as loop,
    ):
        # Read only after the burst: queues that hold it all (the default
        # drops past 10,000 events, for that subscription alone).
        events = reader.subscribe("burst", queue_size=total)
        handler_bus.on("burst")(lambda event: handled.append(event.data))
        async_bus = loop.run(_async_bus(directory, "burst-async"))
        async_events = loop.run(_async_subscribe(async_bus, "burst", queue_size=total))
        assert reader.sync() and handler_bus.sync() and loop.run(async_bus.sync())
        before = bridge.counters()
        for n in range(total):
            publisher.publish("burst", n)
        assert publisher.flush()
        assert [events.get(timeout=10).data for _ in range(total)] == list(range(total))

        async def read_all() -> list[int]:
            return [(await async_events.get(timeout=10)).data for _ in range(total)]

        assert loop.run(read_all()) == list(range(total))
        wait_until(lambda: len(handled) == total, 10, "the handler to see every message")
        assert handled == list(range(total))
        assert reader.stats()["missed"] == handler_bus.stats()["missed"] == 0
        after = bridge.counters()
        messages = after["accepted"] - before["accepted"]
        frames = after["accepted_frames"] - before["accepted_frames"]
        assert messages == total + 1  # and the flush marker
        assert frames < messages / 10, f"{messages} messages came in {frames} frames"
        loop.run(async_bus.close())


def test_an_async_burst_is_batched_too(bridge: BridgeProcess) -> None:
    total = 5_000
    directory = str(bridge.directory)
    with Bus(dir=directory, worker="async-burst-reader") as reader, AsyncioThread() as loop:
        events = reader.subscribe("aburst")
        assert reader.sync()
        before = bridge.counters()

        async def burst() -> None:
            async with AsyncBus(dir=directory, worker="async-burst-pub") as bus:
                for n in range(total):
                    await bus.publish("aburst", n)
                assert await bus.flush()

        loop.run(burst())
        assert [events.get(timeout=10).data for _ in range(total)] == list(range(total))
        after = bridge.counters()
        frames = after["accepted_frames"] - before["accepted_frames"]
        assert frames < total / 10, f"{total} messages came in {frames} frames"


def test_a_lone_publish_goes_at_once_in_a_frame_of_its_own(bridge: BridgeProcess) -> None:
    directory = str(bridge.directory)
    with Bus(dir=directory, worker="lone-reader") as reader, Bus(dir=directory) as publisher:
        events = reader.subscribe("lone")
        assert reader.sync()
        before = bridge.counters()
        publisher.publish("lone", 1)
        assert events.get(timeout=10).data == 1  # no flush needed: nothing was held
        after = bridge.counters()
        assert after["accepted_frames"] - before["accepted_frames"] == 1


def test_two_threads_reading_one_subscription_share_its_events(bridge: BridgeProcess) -> None:
    """Whichever thread receives for the bus, each event goes to exactly one reader."""
    total = 5_000
    directory = str(bridge.directory)
    got: list[list[int]] = [[], []]

    def read(into: list[int], subscription: Subscription) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                into.append(subscription.get(timeout=1.0).data)

    with Bus(dir=directory, worker="shared-reader") as reader, Bus(dir=directory) as publisher:
        events = reader.subscribe("shared")
        assert reader.sync()
        threads = [threading.Thread(target=read, args=(got[n], events)) for n in range(2)]
        for thread in threads:
            thread.start()
        for n in range(total):
            publisher.publish("shared", n)
        assert publisher.flush()
        for thread in threads:
            thread.join(30)
    assert sorted(got[0] + got[1]) == list(range(total))
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])


def test_a_reader_receiving_for_itself_hands_handlers_to_the_receiver_thread(
    bridge: BridgeProcess,
) -> None:
    """A handler registered while a reader waits in get() still runs on the
    bus's receiver thread, and both get their events."""
    directory = str(bridge.directory)
    handled: list[tuple[str, Any]] = []
    read: list[Any] = []
    with Bus(dir=directory, worker="mixed") as bus, Bus(dir=directory) as publisher:
        events = bus.subscribe("mixed.iter")
        assert bus.sync()
        reader = threading.Thread(target=lambda: read.append(events.get(timeout=20).data))
        reader.start()
        wait_until(lambda: bus._reader_ident != 0, 10, "the reader to receive for itself")
        bus.on("mixed.handler")(
            lambda event: handled.append((threading.current_thread().name, event.data))
        )
        assert bus.sync(), "sync is answered while a reader holds the sockets"
        publisher.publish("mixed.handler", 1)
        publisher.publish("mixed.iter", 2)
        assert publisher.flush()
        reader.join(20)
        wait_until(lambda: len(handled) == 1, 10, "the handler")
    assert read == [2]
    assert handled == [("circus-events-mixed", 1)]


def test_close_ends_a_reader_that_receives_for_itself(bridge: BridgeProcess) -> None:
    outcome: list[str] = []
    bus = Bus(dir=str(bridge.directory), worker="closing")
    events = bus.subscribe("never")
    assert bus.sync()

    def read() -> None:
        try:
            events.get(timeout=30)
            outcome.append("event")
        except BusClosed:
            outcome.append("closed")

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: bus._reader_ident != 0, 10, "the reader to receive for itself")
    started = time.monotonic()
    bus.close()
    reader.join(10)
    assert outcome == ["closed"]
    assert time.monotonic() - started < 5


def test_async_get_nowait_takes_what_is_queued_and_never_waits(bridge: BridgeProcess) -> None:
    async def scenario() -> None:
        async with AsyncBus(dir=str(bridge.directory), worker="nowait") as bus:
            subscription = bus.subscribe("nowait.*", queue_size=2)
            assert subscription.get_nowait() is None  # nothing yet: no wait
            for n in range(2):
                await bus.publish("nowait.x", n, scope="process")
            first = await subscription.get(timeout=5)
            assert [first.data, subscription.get_nowait().data] == [0, 1]  # type: ignore[union-attr]
            assert subscription.get_nowait() is None
            subscription.close()
            assert subscription.get_nowait() is None  # closed: get() says so
            with pytest.raises(BusClosed):
                await subscription.get(timeout=1)

    asyncio.run(scenario())


def test_async_close_waits_for_a_running_handler_and_cancels_one_that_hangs(
    bridge: BridgeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def close_during_handler(release: bool) -> list[str]:
        outcome: list[str] = []
        running, done = asyncio.Event(), asyncio.Event()
        bus = await _async_bus(str(bridge.directory), f"closing-async-{release}")

        @bus.on("slow.job")
        async def handler(event: Event) -> None:
            running.set()
            try:
                await done.wait()
                outcome.append(f"finished {event.data}")
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        assert await bus.sync()
        async with AsyncBus(dir=str(bridge.directory), worker=f"job-{release}") as publisher:
            await publisher.publish("slow.job", 1, scope="host")
            await asyncio.wait_for(running.wait(), 10)
        closing = asyncio.create_task(bus.close())
        deadline = time.monotonic() + 10
        while not bus.closed:  # close() has begun and now waits for the handler
            assert time.monotonic() < deadline, "close() never began"
            await asyncio.sleep(0)
        assert not closing.done()
        if release:
            done.set()
        await asyncio.wait_for(closing, 10)
        return outcome

    # close() returns once the handler does, not at the end of its wait
    monkeypatch.setattr(aio, "RECEIVER_JOIN_TIMEOUT", 60)
    assert asyncio.run(close_during_handler(release=True)) == ["finished 1"]
    monkeypatch.setattr(aio, "RECEIVER_JOIN_TIMEOUT", 0.2)
    assert asyncio.run(close_during_handler(release=False)) == ["cancelled"]
