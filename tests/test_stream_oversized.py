"""Stream mode: an entry far larger than any bridge writes is stepped over, not read.

Someone with access to Redis ``XADD``s a 100 MB value into the namespace's
stream. hiredis would hold it whole before the bridge refused it (and again
after every reconnection); the bridge drops its read connection once a value
passes ``max_message_bytes`` and reads past it with a script that leaves
oversized entries out (``bridge.stream_screen``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Final

import pytest
from conftest import BridgeProcess, RedisServer, wait_until
from test_bridge_memory import Watch, rss

from circus_events import Bus, Subscription

MiB: Final = 1024 * 1024
HUGE: Final = 100 * MiB
EVENTS: Final = 200
#: Without the screen the reading bridge rose by 100 MiB (hiredis holds the
#: value whole); with it, by 2 MiB: what it read before giving up.
GROWTH: Final = 32 * MiB


STREAM_KEY: Final = "circus-events:default:@stream:0"


@contextlib.contextmanager
def two_hosts(
    bridge_factory: Callable[..., BridgeProcess], writer_url: str, reader_url: str
) -> Iterator[tuple[Bus, Subscription, BridgeProcess]]:
    """Stream-mode bridges on host-a (a writer) and host-b (a reader of ``ev``,
    reading the stream when this yields)."""
    stream = ("--mode", "stream")
    a = bridge_factory("host-a", redis_url=writer_url, args=stream)
    b = bridge_factory("host-b", redis_url=reader_url, args=stream)
    with (
        Bus(dir=str(a.directory), host="host-a", worker="writer") as writer,
        Bus(dir=str(b.directory), host="host-b", worker="reader") as reader,
    ):
        events = reader.subscribe("ev")
        assert reader.sync(10)
        wait_until(lambda: b.status()["redis"]["state"] == "connected", 20, "host-b reading")
        yield writer, events, b


@pytest.mark.timeout(120)
def test_a_huge_foreign_entry_is_stepped_over_and_the_stream_flows_on(
    bridge_factory: Callable[..., BridgeProcess], redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    with two_hosts(bridge_factory, redis_server.url, redis_server.url) as (writer, events, b):
        assert b.process is not None
        start = rss(b.process.pid)
        with Watch(b) as watch:
            for n in range(EVENTS // 2):
                writer.publish("ev", n)
            assert writer.flush(10)
            redis.xadd(STREAM_KEY, {"ev": b"x" * HUGE})
            for n in range(EVENTS // 2, EVENTS):
                writer.publish("ev", n)
            assert writer.flush(10)
            got = [events.get(timeout=30).data for _ in range(EVENTS)]
        status = b.status()["redis"]
    assert got == list(range(EVENTS))  # everything, in order, nothing twice
    assert watch.peak <= start + GROWTH, ((watch.peak - start) / MiB, status)
    assert status["oversized_reads"] >= 1, status
    print(
        f"\nbridge RSS {start / MiB:.0f} -> peak {watch.peak / MiB:.0f} MiB; {status['last_error']}"
    )


@pytest.mark.timeout(120)
def test_where_redis_refuses_scripts_the_entry_is_read_whole_once_and_the_stream_flows_on(
    bridge_factory: Callable[..., BridgeProcess], redis_server: RedisServer
) -> None:
    # A Redis user that may do everything but run scripts (an ACL, a managed Redis).
    redis = redis_server.client()
    redis.acl_setuser(
        "noscript", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-@scripting"],
    )  # fmt: skip
    url = f"redis://noscript:pw@127.0.0.1:{redis_server.port}/0"
    with two_hosts(bridge_factory, redis_server.url, url) as (writer, events, b):
        writer.publish("ev", 0)
        redis.xadd(STREAM_KEY, {"ev": b"x" * (8 * MiB)})
        writer.publish("ev", 1)
        assert writer.flush(10)
        got = [events.get(timeout=30).data for _ in range(2)]
        status = b.status()["redis"]
    assert got == [0, 1]
    # Met, screened, refused by Redis, then read whole once: as before the guard.
    assert status["oversized_reads"] >= 1 and status["read_errors"] >= 1, status
