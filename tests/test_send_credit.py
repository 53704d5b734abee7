"""A publisher's queue to its bridge is bounded in bytes (``send_queue_bytes``).

Real bridges: one that is not running yet, one killed while a publish
waits, and a handler that publishes on its own bus while the bridge reads
nothing. The rules alone (:class:`SendCredit`) are in test_client_pure.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable

import pytest
from conftest import BridgeProcess, wait_until

from circus_events import AsyncBus, Bus, Event, Gap, PublishTimeout

LIMIT = 1024 * 1024
#: A JSON string of this many characters: 64 KiB and its quotes.
BIG = "x" * (64 * 1024)
#: Unread at most: the bound, the message that passed it, and one held in a
#: batch (a burst holds even a large message a moment), with their headers.
MOST_UNREAD = LIMIT + 2 * (len(BIG) + 1024)
MOST_TAKEN = LIMIT // len(BIG) + 2


def _fill(publish: Callable[[int], None]) -> int:
    """Publish BIG messages until one times out; how many were taken."""
    taken = 0
    with pytest.raises(PublishTimeout, match="send_queue_bytes") as raised:
        while taken < 1000:
            publish(taken)
            taken += 1
    assert isinstance(raised.value, TimeoutError)
    return taken


def _numbers_up_to(get: Callable[[], int], last: int) -> list[int]:
    """What ``get`` returns until ``last`` came (earlier ones may be missing)."""
    got = [get()]
    while got[-1] != last:
        got.append(get())
    return got


@pytest.mark.timeout(60)
def test_a_publisher_waits_at_its_byte_bound_and_the_bridge_reads_all_it_took(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(start=False)
    directory = str(bridge.directory)
    with (
        Bus(dir=directory, worker="reader") as reader,
        Bus(dir=directory, worker="big", send_queue_bytes=LIMIT, publish_timeout=1) as bus,
    ):
        events = reader.subscribe("big")
        taken = _fill(lambda n: bus.publish("big", {"n": n, "blob": BIG}))
        # The frame queue (20,000) would have taken them all: bytes stopped it.
        assert taken <= MOST_TAKEN
        assert bus._core.credit.unread <= MOST_UNREAD
        bridge.start()
        assert reader.sync(10)
        # Credit comes back from the new bridge: publishing goes on.
        for n in range(taken, taken + 40):
            bus.publish("big", {"n": n, "blob": BIG})
        assert bus.flush(10)
        got = _numbers_up_to(lambda: events.get(timeout=10).data["n"], taken + 39)
        markers = bus._core.credit.markers
    assert [n for n in got if n >= taken] == list(range(taken, taken + 40))
    # What it took before the bridge came, the bridge read: none lost on the way.
    assert bridge.counters()["accepted"] >= taken + 40 + markers


@pytest.mark.timeout(60)
def test_an_async_publisher_waits_at_its_byte_bound_too(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(start=False)
    directory = str(bridge.directory)

    async def main() -> None:
        async with (
            AsyncBus(dir=directory, worker="reader") as reader,
            AsyncBus(dir=directory, worker="big", send_queue_bytes=LIMIT, publish_timeout=1) as bus,
        ):
            events = reader.subscribe("big")
            taken = 0
            with pytest.raises(PublishTimeout, match="send_queue_bytes"):
                while taken < 1000:
                    await bus.publish("big", {"n": taken, "blob": BIG})
                    taken += 1
            assert taken <= MOST_TAKEN
            assert bus._core.credit.unread <= MOST_UNREAD
            await asyncio.to_thread(bridge.start)
            assert await reader.sync(10)
            for n in range(taken, taken + 40):
                await bus.publish("big", {"n": n, "blob": BIG})
            assert await bus.flush(10)
            got: list[int] = []
            while not got or got[-1] != taken + 39:
                got.append((await events.get(timeout=10)).data["n"])
            assert [n for n in got if n >= taken] == list(range(taken, taken + 40))
            counters = await asyncio.to_thread(bridge.counters)
            assert counters["accepted"] >= taken + 40 + bus._core.credit.markers

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_publish_waiting_for_credit_goes_on_once_a_killed_bridge_is_back(
    bridge: BridgeProcess,
) -> None:
    directory = str(bridge.directory)
    gaps: list[Gap] = []
    with (
        Bus(dir=directory, worker="big", send_queue_bytes=LIMIT, publish_timeout=30) as bus,
        Bus(dir=directory, worker="reader", on_gap=gaps.append) as reader,
    ):
        events = reader.subscribe("big")
        assert reader.sync(10) and bus.sync(10)
        bus.publish("big", {"n": -1, "blob": ""})
        assert events.get(timeout=10).data["n"] == -1
        os.kill(bridge.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        published: list[int] = []
        failed: list[BaseException] = []

        def publish_on() -> None:
            try:
                for n in range(60):  # ~4 MiB: past the bound while nothing is read
                    bus.publish("big", {"n": n, "blob": BIG})
                    published.append(n)
            except BaseException as exc:  # reported below
                failed.append(exc)

        thread = threading.Thread(target=publish_on)
        thread.start()
        wait_until(lambda: bus._core.credit.exhausted, 20, "the publisher to reach its bound")
        stuck_at = len(published)
        bridge.kill()  # the markers die with it
        bridge.start()
        thread.join(40)
        assert not thread.is_alive() and failed == [], failed
        assert stuck_at < 60 and published == list(range(60))
        assert bus.flush(10)
        # The killed bridge took some with it (pub/sub: at most once); the new
        # one delivered the rest in order, and every loss is a reported gap.
        got = _numbers_up_to(lambda: events.get(timeout=10).data["n"], 59)
        assert got == sorted(got)
        assert len(got) + sum(gap.missed for gap in gaps) == 60


@pytest.mark.timeout(60)
def test_a_handler_publishing_on_its_own_bus_never_waits_for_credit(
    bridge: BridgeProcess,
) -> None:
    """Credit comes back through the receiving thread: a handler waiting for
    it would wait for itself, so its publishes are bounded by frames only."""
    directory = str(bridge.directory)
    release = threading.Event()
    outcome: list[object] = []
    with Bus(dir=directory, worker="echo", send_queue_bytes=LIMIT, publish_timeout=2) as bus:

        @bus.on("go")
        def answer(event: Event) -> None:
            release.wait(30)
            try:
                bus.publish("answer", {"blob": BIG})
                outcome.append("sent")
            except PublishTimeout as exc:
                outcome.append(exc)

        with Bus(dir=directory, worker="starter") as starter:
            assert bus.sync(10) and starter.sync(10)
            starter.publish("go", 1)
            assert starter.flush(10)
        os.kill(bridge.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            with pytest.raises(PublishTimeout, match="send_queue_bytes"):
                for n in range(1000):
                    bus.publish("fill", {"n": n, "blob": BIG})
            assert bus._core.credit.exhausted
            release.set()
            wait_until(lambda: outcome, 10, "the handler's publish")
            assert outcome == ["sent"]
        finally:
            os.kill(bridge.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
