"""``max_delay``: events that waited too long on their way are dropped on
arrival and reported as ``late`` gaps, for ``Bus`` and ``AsyncBus``.

A handler that blocks makes the backlog wait in the worker's pipe; once it
is older than ``max_delay`` and the handler returns, the backlog is dropped
unread, every event of it counted in one ``late`` report, and what is
published afterwards arrives as usual.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import BridgeProcess, wait_until
from helpers import until

from circus_events import GAP_LATE, AsyncBus, Bus, Event, Gap

MAX_DELAY = 0.3
BACKLOG = 100


@pytest.mark.timeout(60)
def test_a_backlog_older_than_max_delay_is_dropped_and_reported(bridge: BridgeProcess) -> None:
    directory = str(bridge.directory)
    gaps: list[Gap] = []
    got: list[int] = []
    release = threading.Event()
    with (
        Bus(dir=directory, worker="slow", max_delay=MAX_DELAY, on_gap=gaps.append) as slow,
        Bus(dir=directory, worker="pub") as pub,
    ):

        @slow.on("work")
        def handle(event: Event) -> None:
            got.append(event.data)
            if event.data == 0:
                release.wait(30)  # the backlog waits in the pipe meanwhile

        assert slow.sync(10)
        pub.publish("work", 0)
        wait_until(lambda: got == [0], 10, "the first event")
        sent = time.time()
        for n in range(1, BACKLOG + 1):
            pub.publish("work", n)
        assert pub.flush(10)
        wait_until(lambda: time.time() - sent > 2 * MAX_DELAY, 5, "the backlog to grow old")
        release.set()
        wait_until(lambda: sum(g.missed for g in gaps) == BACKLOG, 10, "the late report")
        pub.publish("work", BACKLOG + 1)
        wait_until(lambda: got[-1] == BACKLOG + 1, 10, "an event in time")
        assert slow.stats()["late"] == BACKLOG
    assert got == [0, BACKLOG + 1]
    assert {(g.reason, g.origin, g.channel) for g in gaps} == {(GAP_LATE, "pub", "work")}


@pytest.mark.timeout(60)
def test_an_async_bus_drops_late_events_too(bridge: BridgeProcess) -> None:
    directory = str(bridge.directory)

    async def main() -> None:
        gaps: list[Gap] = []
        got: list[int] = []
        release = asyncio.Event()
        async with (
            AsyncBus(dir=directory, worker="slow", max_delay=MAX_DELAY, on_gap=gaps.append) as slow,
            AsyncBus(dir=directory, worker="pub") as pub,
        ):

            @slow.on("work")
            async def handle(event: Event) -> None:
                got.append(event.data)
                if event.data == 0:
                    await release.wait()

            assert await slow.sync(10)
            await pub.publish("work", 0)
            await until(lambda: got == [0], 10, "the first event")
            sent = time.time()
            for n in range(1, BACKLOG + 1):
                await pub.publish("work", n)
            assert await pub.flush(10)
            await until(lambda: time.time() - sent > 2 * MAX_DELAY, 5, "the backlog to grow old")
            release.set()
            await until(lambda: sum(g.missed for g in gaps) == BACKLOG, 10, "the late report")
            await pub.publish("work", BACKLOG + 1)
            await until(lambda: got[-1] == BACKLOG + 1, 10, "an event in time")
        assert got == [0, BACKLOG + 1]
        assert {g.reason for g in gaps} == {GAP_LATE}

    asyncio.run(main())
