"""subscribe(pattern, history=N): history first, then live, no duplicate, no hole."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

import pytest
from conftest import BridgeProcess, RedisServer

from circus_events import AsyncBus, BridgeError, Bus


def test_history_without_stream_mode_says_so_and_live_events_follow(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory), worker="late") as late, Bus(dir=str(bridge.directory)) as p:
        events = late.subscribe("news", history=10)
        with pytest.raises(BridgeError, match="stream mode"):
            events.get(timeout=10)
        assert late.sync()
        p.publish("news", "live")
        assert events.get(timeout=5).data == "live"


def test_async_history_error_too(bridge: BridgeProcess) -> None:
    async def main() -> None:
        async with AsyncBus(dir=str(bridge.directory), worker="late") as late:
            events = late.subscribe("news", history=3)
            with pytest.raises(BridgeError, match="stream mode"):
                await events.get(timeout=10)

    asyncio.run(main())


def test_history_seam_has_no_duplicate_and_no_hole(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=("--mode", "stream"))
    b = bridge_factory("host-b", redis_url=redis_server.url, args=("--mode", "stream"))
    stop = threading.Event()
    published: list[int] = []

    def publish_forever() -> None:
        with Bus(dir=str(a.directory), host="host-a", worker="ticker") as ticker:
            n = 0
            while not stop.wait(0.0005):  # ~1-2k msg/s, paced
                ticker.publish("ticks", n)
                published.append(n)
                n += 1

    thread = threading.Thread(target=publish_forever)
    thread.start()
    try:
        with Bus(dir=str(b.directory), host="host-b", worker="late") as late:
            for trial in range(100):
                wanted = 20 + trial % 30
                events = late.subscribe("ticks", history=wanted)
                got = [events.get(timeout=10).data for _ in range(wanted + 20)]
                events.close()
                # history then live: consecutive numbers, none twice, none missing
                assert got == list(range(got[0], got[0] + len(got))), f"trial {trial}: {got}"
                assert got[0] >= 0
    finally:
        stop.set()
        thread.join(30)


def test_history_limit_and_order(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=("--mode", "stream"))
    with Bus(dir=str(a.directory), host="host-a", worker="p") as p:
        for n in range(50):
            p.publish("orders.paid" if n % 2 else "users.new", n)
        assert p.flush()
    with Bus(dir=str(a.directory), host="host-a", worker="late") as late:
        events = late.subscribe("orders.*", history=5)
        assert [events.get(timeout=10).data for _ in range(5)] == [41, 43, 45, 47, 49]
        with pytest.raises(queue.Empty):
            events.get(timeout=0.3)


def publish_burst(bridge: BridgeProcess, total: int) -> None:
    """``bulk`` events 0 to total - 1, as fast as one publisher goes (batched)."""
    with Bus(dir=str(bridge.directory), host="host-a", worker="p") as p:
        for n in range(total):
            p.publish("bulk", n)
        assert p.flush()


def test_history_counts_events_inside_batched_entries(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """A burst is kept as a few batch entries; history still counts events."""
    a = bridge_factory("host-a", redis_url=redis_server.url, args=("--mode", "stream"))
    total = 3_000
    publish_burst(a, total)
    assert a.counters()["accepted_frames"] < total / 10, "the burst was batched"
    with Bus(dir=str(a.directory), host="host-a", worker="late") as late:
        for limit in (1, 150, 1000):
            events = late.subscribe("bulk", history=limit)
            got = [events.get(timeout=10).data for _ in range(limit)]
            assert got == list(range(total - limit, total))
            with pytest.raises(queue.Empty):
                events.get(timeout=0.3)
            events.close()


@pytest.mark.timeout(120)
def test_a_history_larger_than_the_subscriber_queue_arrives_whole(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """60,000 events is three times a subscriber queue's 20,000 frames: XPUB
    dropped what did not fit (53,957 arrived, and nothing said so); a reply
    now waits for its worker to read."""
    a = bridge_factory("host-a", redis_url=redis_server.url, args=("--mode", "stream"))
    total = 60_000
    publish_burst(a, total)
    with Bus(dir=str(a.directory), host="host-a", worker="late") as late:
        events = late.subscribe("bulk", history=total)
        got = [events.get(timeout=20).data for _ in range(total)]
        assert got == list(range(total))
        with pytest.raises(queue.Empty):
            events.get(timeout=0.3)
        assert late.stats()["gaps"] == 0
    assert a.counters()["history_replayed"] == total
