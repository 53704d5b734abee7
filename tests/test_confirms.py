"""Publisher confirms and a restarted bridge's local delivery, against real processes.

Bridges run as ``circus-events bridge`` processes, workers as in-test
``Bus``/``AsyncBus`` objects (see :mod:`conftest`, :mod:`helpers`); Redis is a
real redis-server. No mocks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import AsyncioThread, BridgeProcess, RedisServer, wait_until
from helpers import Collector, collecting_bus, paced

from circus_events import AsyncBus, Bus

pytestmark = pytest.mark.timeout(90)

STREAM = ("--mode", "stream")


def test_flush_returns_once_redis_has_everything_in_stream_mode(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    with Bus(dir=str(a.directory), host="host-a", worker="pub") as bus:
        for n in range(2000):
            bus.publish("ticks", n)
        bus.publish("ticks", "host only", scope="host")
        assert bus.flush(10)
        stats = bus.stats()
        assert stats["unconfirmed"] == 0 and stats["released"] == 0
    counters = a.counters()
    assert counters["confirms_sent"] >= 1 and counters["resumes"] >= 1
    # A second hello may bring a second resend: the bridge drops what it relayed.
    assert a.status()["redis"]["published"] == 2000


def test_workers_that_publish_as_they_start_write_each_message_to_redis_once(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """A bus publishing at once gets two hellos (its inbox subscription, and the
    frame dropped before its resume marker) and resends twice: like the CLI."""
    a = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    for n in range(20):
        with Bus(dir=str(a.directory), host="host-a", worker=f"once-{n}") as bus:
            bus.publish("jobs.done", n)
            assert bus.flush(10)
    counters = a.counters()
    assert counters["dropped_unresumed"] >= 1  # the race the test is about did happen
    client = redis_server.client()
    streams = [key for key in client.keys("*") if client.type(key) == b"stream"]
    assert sum(client.xlen(key) for key in streams) == 20
    assert a.status()["redis"]["published"] == 20


def test_pubsub_mode_keeps_nothing(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url)
    with Bus(dir=str(a.directory), host="host-a", worker="pub") as bus:
        assert bus.sync(10)
        for n in range(100):
            bus.publish("ticks", n)
        assert bus.flush(10)
        assert bus.stats()["unconfirmed"] == 0
    assert a.counters()["confirms_sent"] == 0


def test_async_bus_resends_and_flush_waits_for_confirms(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    b = bridge_factory("host-b", redis_url=redis_server.url, args=STREAM)
    remote_bus, remote = collecting_bus(b, "ticks", "remote")

    async def publish() -> dict[str, int]:
        async with AsyncBus(dir=str(a.directory), host="host-a", worker="apub") as bus:
            for n in range(500):
                await bus.publish("ticks", n)
            assert await bus.flush(10)
            return bus.stats()

    with remote_bus, AsyncioThread() as loop:
        stats = loop.run(publish())
        assert stats["unconfirmed"] == 0
        wait_until(lambda: len(remote.data()) >= 500, 20, "every message")
        assert remote.data() == list(range(500))


def test_bridge_sigkilled_during_a_2000_per_s_stream_and_restarted_1s_later(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    b = bridge_factory("host-b", redis_url=redis_server.url, args=STREAM)
    local_bus, local = collecting_bus(a, "ticks", "local")
    remote_bus, remote = collecting_bus(b, "ticks", "remote")
    total = 8000
    # Killed at 1 s, restarted 1 s later (2,000 msg/s), 2 s more after that.
    actions = {2000: a.kill, 4000: lambda: a.start(wait=False)}
    with Bus(dir=str(a.directory), host="host-a", worker="ticker") as ticker, local_bus, remote_bus:
        paced(ticker, "ticks", 2000, range(total), actions)
        # A last marker: any resent duplicate, being older, arrives before it.
        ticker.publish("ticks", "end")
        assert ticker.flush(20)
        for name, collector in (("local", local), ("remote", remote)):
            wait_until(lambda c=collector: c.data()[-1:] == ["end"], 30, f"{name}: the marker")
            assert collector.data() == [*range(total), "end"], f"{name}: all, once, in order"
            assert collector.missed == 0 and not collector.gaps, name
        assert ticker.stats()["unconfirmed"] == 0


def test_a_subscriber_back_late_after_a_restart_gets_what_its_host_published_meanwhile(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """Deliver 2: the restarted bridge holds local delivery while it catches
    up with the stream (it waits for the saved subscriptions): a subscriber
    that comes back after the publisher has resent to the new bridge still
    gets everything published on its host since its bridge died, in order, once."""
    a = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    first_bus, first = collecting_bus(a, "ticks", "first")
    late: list[tuple[Bus, Collector]] = []

    def restart() -> None:
        # Gone for good: its saved inbox never comes back, so the restarted
        # bridge waits its whole resume_grace (3 s) for it.
        first_bus.close()
        a.start(wait=False)

    def come_back_late() -> None:
        def resumed() -> bool:
            status = a.status(0.5)
            return status is not None and status["counters"]["resumes"] >= 1

        wait_until(resumed, 20, "the ticker to resume with the new bridge")
        assert a.status()["redis"]["catching_up"], "the new bridge still holds"
        late.append(collecting_bus(a, "ticks", "late"))

    actions = {1000: a.kill, 2000: restart, 2200: come_back_late}
    with Bus(dir=str(a.directory), host="host-a", worker="ticker") as ticker:
        paced(ticker, "ticks", 1000, range(4000), actions)
        ticker.publish("ticks", "end")
        assert ticker.flush(20)
        late_bus, collector = late[0]
        with late_bus:
            wait_until(lambda: collector.data()[-1:] == ["end"], 30, "the marker")
            data = collector.data()
            assert data[0] <= 1000, "what was published while the bridge was down"
            assert data == [*range(data[0], 4000), "end"], "all, once, in order"
            assert not collector.gaps
    assert first.data() == list(range(len(first.data())))
