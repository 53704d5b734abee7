"""Stream mode against real redis-server processes: StreamSide in-process, bridges as processes.

In-process tests run StreamSide instances ("hosts") in one asyncio loop;
the acceptance tests run ``circus-events bridge --mode stream`` processes
with in-test workers (``Bus``). Redis is killed, paused or restarted through
the conftest fixtures. No mocks.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import BridgeProcess, RedisServer, wait_until
from helpers import (
    ORDERS,
    SidePeer,
    X,
    buffer_cap,
    cancel_run,
    clients,
    collecting_bus,
    kill_redis,
    make_frame,
    paced,
    run,
    seqs,
    until,
)

from circus_events import Bus
from circus_events._config import BridgeConfig
from circus_events._exceptions import BridgeError, ConfigError
from circus_events.bridge.stream_queries import XREAD_COUNT, XREAD_MAX_BYTES, xread_count
from circus_events.bridge.stream_side import (
    StreamNames,
    StreamSide,
    shard_of,
)
from circus_events.protocol import SubscriptionTopic, decode_frame, frame_from_redis, frame_to_redis

pytestmark = pytest.mark.timeout(60)


class Peer(SidePeer):
    """A StreamSide ("host")."""

    def __init__(self, url: str, host: str, resume_grace: float = 3.0, **options: Any) -> None:
        super().__init__(url, host, mode="stream", **options)
        self.side = StreamSide(self.config, deliver=self.frames.extend, resume_grace=resume_grace)

    async def ready(self, timeout: float = 10.0) -> None:
        await until(lambda: self.side.connected, timeout, f"{self.config.host} reading")

    async def flushed(self) -> None:
        await until(lambda: self.status()["buffered_messages"] == 0, 10, "the flush")


def test_relays_wanted_frames_in_order_once_without_echo(redis_server: RedisServer) -> None:
    async def main() -> None:
        direct = SubscriptionTopic("@w:B/w/9", True)
        async with Peer.pair(redis_server.url, ORDERS, X, direct) as (a, b):
            assert b.side.subscriptions_settled and b.side.is_subscribed(ORDERS)
            channels = ["orders.paid", "x", "other", "orders.eu.new", "xy"]
            sent = [make_frame(channels[i % 5], i) for i in range(10_000)]
            sent.append(make_frame("hello", 10_000, target="B/w/9"))
            sent.append(make_frame("hello", 10_001, target="B/w/8"))
            wanted = [f for f in sent if f.startswith((b"orders.", b"x\0", b"@w:B/w/9\0"))]
            await a.publish_all(sent)
            await until(lambda: len(b.frames) >= len(wanted), 10, "B receives everything")
            await until(lambda: a.status()["dropped_own"] == len(sent), 10, "A's own echo")
            await until(lambda: b.status()["cursor"] == a.status()["cursor"], 5, "same cursor")
            assert b.frames == wanted  # in order, exactly once, byte for byte
            assert a.frames == []
            status = b.status()
            assert status["received"] == len(wanted)
            assert status["skipped"] == len(sent) - len(wanted), "unwanted: skipped, counted"
            assert a.status()["published"] == len(sent)
            assert status["state"] == "connected" and status["data_lost"] == 0
            assert status["mode"] == "stream" and status["subscriptions"] == 3

    run(main())


def test_entries_are_the_protocol_encoding(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer(redis_server.url, "A") as a:
            await a.ready()
            frame = make_frame("orders.paid", 1, payload=b"\x00\xffdata")
            await a.publish_all([frame])
            await a.flushed()
        key = StreamNames(a.config).streams[0]
        assert key == b"circus-events:t:@stream:0"
        [(_, fields)] = redis_server.client().xrange(key)
        [(channel, value)] = fields.items()
        assert channel == b"orders.paid"
        assert value == frame_to_redis(frame, frame.index(b"\0"), a.config.node_id)
        assert frame_from_redis(channel, value)[1] == frame

    run(main())


def test_maxlen_and_shards(redis_server: RedisServer) -> None:
    async def main() -> None:
        retention = 1000
        async with Peer.pair(
            redis_server.url, SubscriptionTopic("c.", False), retention=retention, stream_shards=4
        ) as (a, b):
            channels = [f"c.{n}" for n in range(40)]
            sent = [make_frame(channels[i % 40], i // 40) for i in range(12_000)]
            for start in range(0, len(sent), 400):  # B keeps within the retention
                await a.publish_all(sent[start : start + 400])
                await until(lambda n=start + 400: len(b.frames) >= n, 10, "B reads every shard")
            for channel in channels:
                mine = [f for f in b.frames if f.startswith(channel.encode() + b"\0")]
                assert seqs(mine) == list(range(300)), "per channel: all, in order"
        client = redis_server.client()
        keys = StreamNames(a.config).streams
        assert keys == [b"circus-events:t:@stream:%d" % n for n in range(4)]
        lengths = [client.xlen(key) for key in keys]
        assert all(retention <= n <= retention + 200 for n in lengths), lengths  # MAXLEN ~
        for key_number, key in enumerate(keys):
            seen = {f for _, fields in client.xrange(key) for f in fields}
            assert seen, "every shard is used"
            assert {shard_of(c, 4) for c in seen} == {key_number}
        assert b.status()["stream_shards"] == 4 and len(b.status()["cursor"]) == 4

    run(main())


def test_ignore_hosts(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with (
            Peer(redis_server.url, "A") as a,
            Peer(redis_server.url, "C") as c,
            Peer(redis_server.url, "B", ignore_hosts=("C",)) as b,
        ):
            b.side.add_interest(X)
            for peer in (a, b, c):
                await peer.ready()
            await c.publish_all([make_frame("x", 1, host="C")])
            await c.flushed()
            await a.publish_all([make_frame("x", 1)])
            await until(lambda: len(b.frames) == 1, 10, "A's frame")
            assert decode_frame(b.frames[0]).host == "A"
            assert b.status()["ignored_hosts"] == 1

    run(main())


def test_stream_shards_option_is_parsed() -> None:
    assert BridgeConfig.from_options({"stream_shards": "4"}).stream_shards == 4
    assert BridgeConfig().stream_shards == 1
    with pytest.raises(ConfigError, match="stream_shards"):
        BridgeConfig.from_options({"stream_shards": "0"})


# -- position --------------------------------------------------------------------------


def test_restart_resumes_at_the_saved_cursor_and_a_new_host_starts_at_the_end(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        async with Peer(redis_server.url, "A") as a:
            await a.ready()
            b = Peer(redis_server.url, "B")
            async with b:
                b.side.add_interest(X)
                await b.ready()
                await a.publish_all([make_frame("x", i) for i in range(100)])
                await until(lambda: len(b.frames) == 100, 10, "the first 100")
            # B is gone (closed: cursor saved); A goes on.
            await a.publish_all([make_frame("x", i) for i in range(100, 250)])
            await a.flushed()
            await asyncio.sleep(0.05)  # "new" is what comes after a bridge starts (ms ids)
            again = Peer(redis_server.url, "B", resume_grace=5.0)
            new = Peer(redis_server.url, "N")
            async with again, new:
                new.side.add_interest(X)
                await new.ready()
                await asyncio.sleep(0.3)
                assert not again.side.connected, "waits for its saved subscriptions"
                assert again.status()["resuming"]
                again.side.add_interest(X)  # the worker is back
                await again.ready(2)
                await until(lambda: len(again.frames) == 150, 10, "what B missed")
                assert seqs(again.frames) == list(range(100, 250)), "exactly, no replay"
                await a.publish_all([make_frame("x", 250)])
                await until(lambda: len(new.frames) == 1, 10, "the new host sees new ones")
                assert seqs(new.frames) == [250], "a new host starts at the end"
                await until(lambda: len(again.frames) == 151, 10, "and B too")
                assert again.status()["data_lost"] == 0

    run(main())


def test_resume_wait_is_bounded(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer(redis_server.url, "B") as b:
            b.side.add_interest(X)
            await b.ready()
        started = time.monotonic()
        async with Peer(redis_server.url, "B", resume_grace=0.5) as again:
            await again.ready(5)  # nobody resubscribes: reads anyway
            assert 0.4 < time.monotonic() - started < 3

    run(main())


def test_away_longer_than_the_retention_is_an_overrun(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer(redis_server.url, "A", retention=100) as a:
            await a.ready()
            async with Peer(redis_server.url, "B", retention=100) as b:
                b.side.add_interest(X)
                await b.ready()
                await a.publish_all([make_frame("x", 0)])
                await until(lambda: len(b.frames) == 1, 10, "before")
            await a.publish_all([make_frame("x", i) for i in range(1, 1001)])
            await a.flushed()
            async with Peer(redis_server.url, "B", retention=100, resume_grace=0) as again:
                again.side.add_interest(X)
                await again.ready()
                status = again.status()
                assert status["overruns"] == 1 and status["data_lost"] == 0
                assert "trimmed" in status["last_error"]
                await until(lambda: again.frames and seqs(again.frames)[-1] == 1000, 10, "rest")
                kept = seqs(again.frames)
                assert kept == list(range(kept[0], 1001)) and 100 <= len(kept) < 1000

    run(main())


def test_two_bridges_with_one_host_name_are_reported(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with (
            Peer(redis_server.url, "A") as first,
            Peer(redis_server.url, "A") as second,
            Peer(redis_server.url, "C") as c,
        ):
            for peer in (first, second, c):
                await peer.ready()

            def both() -> bool:
                return all(p.status()["foreign_heartbeats"] > 0 for p in (first, second))

            for n in range(40):  # new entries: both save their cursors
                await c.publish_all([make_frame("x", n, host="C")])
                if both():
                    break
                await asyncio.sleep(0.1)
            assert both()

    run(main())


# -- failures -----------------------------------------------------------------------------


def test_redis_restarted_empty_is_detected_and_reading_goes_on(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer.pair(redis_server.url, X) as (a, b):
            await a.publish_all([make_frame("x", i) for i in range(50)])
            await until(lambda: len(b.frames) == 50, 10, "before")
            await asyncio.to_thread(redis_server.restart)  # no AOF: empty
            await until(lambda: b.status()["data_lost"] == 1, 10, "B notices the loss")
            await until(lambda: a.status()["data_lost"] == 1, 10, "A too")
            assert "lost" in b.status()["last_data_loss"]
            await a.ready()
            await b.ready()
            await a.publish_all([make_frame("x", i) for i in range(50, 80)])
            await until(lambda: len(b.frames) == 80, 10, "new ones flow")
            assert seqs(b.frames) == list(range(80))

    run(main())


def test_flushall_without_restart_is_detected(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer.pair(redis_server.url, X) as (a, b):
            await a.publish_all([make_frame("x", 0)])
            await until(lambda: len(b.frames) == 1, 10, "before")
            redis_server.client().flushall()
            await until(lambda: b.status()["data_lost"] == 1, 10, "B notices the flush")
            await a.publish_all([make_frame("x", 1)])
            await until(lambda: len(b.frames) == 2, 10, "new ones flow")

    run(main())


def test_stream_behind_the_cursor_is_a_reported_loss(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer(redis_server.url, "A") as a:
            await a.ready()
            async with Peer(redis_server.url, "B") as b:
                b.side.add_interest(X)
                await b.ready()
                await a.publish_all([make_frame("x", i) for i in range(10)])
                await until(lambda: len(b.frames) == 10, 10, "before")
            # The tail is lost (as after a failover): B's saved cursor is past the stream's end.
            key = StreamNames(a.config).streams[0]
            client = redis_server.client()
            last = client.xrevrange(key, count=2)[1][0]
            client.delete(key)
            client.xadd(key, {b"x": b"junk"}, id=b"1-0")
            client.execute_command("XSETID", key, last)
            async with Peer(redis_server.url, "B") as again:
                again.side.add_interest(X)
                await again.ready()
                assert again.status()["data_lost"] == 1
                await a.publish_all([make_frame("x", 10)])
                await until(lambda: len(again.frames) == 1, 10, "new ones flow")
                assert seqs(again.frames) == [10]

    run(main())


def test_paused_redis_is_detected_and_reading_resumes(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer.pair(redis_server.url, X) as (a, b):
            await a.publish_all([make_frame("x", 0)])
            await until(lambda: len(b.frames) == 1, 10, "before")
            redis_server.pause()
            try:
                await until(lambda: b.status()["heartbeat_misses"] >= 1, 8, "XREAD timeout")
            finally:
                redis_server.resume()
            await a.publish_all([make_frame("x", i) for i in range(1, 20)])
            await until(lambda: len(b.frames) >= 20, 15, "reading resumes")
            assert seqs(b.frames) == list(range(20))
            assert b.status()["reconnects"] >= 1 and b.status()["data_lost"] == 0

    run(main())


def test_buffer_cap_drops_oldest_and_counts_exactly(redis_factory: Callable[..., Any]) -> None:
    redis = redis_factory(aof=True)

    async def main() -> None:
        _, cap = buffer_cap(make_frame("x", 0, payload=b"x" * 100), 50)
        async with Peer.pair(redis.url, X, a={"buffer_max_bytes": cap}) as (a, b):
            await kill_redis(redis, a)
            sent = [make_frame("x", i, payload=b"x" * 100) for i in range(300)]
            await a.publish_all(sent, batch=7)
            assert a.status()["buffered_messages"] == 50
            assert a.status()["dropped"] == 250
            await asyncio.to_thread(redis.start)
            await until(lambda: len(b.frames) >= 50, 15, "the 50 newest")
            assert seqs(b.frames) == list(range(250, 300)), "the oldest were dropped, in order"
            assert b.status()["data_lost"] == 0

    run(main())


def test_two_connections_whatever_the_interest_and_history(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer(redis_server.url, "A") as a:
            for n in range(200):
                a.side.add_interest(SubscriptionTopic(f"c.{n}", n % 2 == 0))
            await a.ready()
            await a.publish_all([make_frame("c.1", 1)])
            await a.side.history(lambda c: True, 10, None)
            names = sorted(c["name"] for c in clients(redis_server, "A"))
            assert names == ["circus-events:A:pub", "circus-events:A:sub"]

    run(main())


def test_close_before_run_cancelled_run_and_close_while_resuming(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        config = BridgeConfig(redis_url=redis_server.url, host="A", mode="stream")
        side = StreamSide(config, deliver=lambda f: None)
        await side.close()
        await side.run()  # returns at once
        other = StreamSide(config, deliver=lambda f: None)
        task = asyncio.create_task(other.run())
        other.add_interest(X)
        await until(lambda: other.status()["connected"], 5, "connected")
        cursor_key = b"circus-events:default:@cursor:" + config.node_id.hex().encode()
        await until(
            lambda: redis_server.client().hget(cursor_key, "interest"), 5, "its interest saved"
        )
        await cancel_run(task, other, redis_server, "A")
        # It saved its subscription: the next one waits for it; closing meanwhile is fine.
        async with Peer(redis_server.url, "A", namespace="default") as waiting:
            await until(lambda: waiting.status()["resuming"], 5, "waiting for its workers")
        assert waiting.status()["state"] == "closed"

    run(main())


# -- history --------------------------------------------------------------------------------


def test_history_newest_n_matching_oldest_first_across_shards(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer.pair(redis_server.url, stream_shards=3, b={"ignore_hosts": ("C",)}) as (
            a,
            b,
        ):
            channels = ["orders.paid", "orders.new", "stock.low", "orders.eu"]
            sent = [make_frame(channels[i % 4], i) for i in range(3000)]
            await a.publish_all(sent[:1500])
            await a.flushed()
            await asyncio.sleep(0.01)  # a later millisecond for since_ms
            since_ms = int(time.time() * 1000)
            await a.publish_all(sent[1500:])
            await a.publish_all([make_frame("orders.paid", 0, host="C")])  # ignored by B
            await a.publish_all([make_frame("note", 0, target="B/w/1")])  # direct: never
            await a.flushed()

            def orders(channel: str) -> bool:
                return channel.startswith("orders.")

            matching = [f for f in sent if f.startswith(b"orders.")]
            newest = await b.side.history(orders, 25, None)
            assert newest == matching[-25:], "the newest 25 matching, oldest first"
            everything = await b.side.history(orders, None, None)
            assert everything == matching
            assert await b.side.history(orders, 10_000, None) == matching
            recent = await b.side.history(orders, None, since_ms)
            assert recent == [f for f in sent[1500:] if f.startswith(b"orders.")]
            both = await b.side.history(orders, 5, since_ms)
            assert both == matching[-5:]
            assert (
                await b.side.history(lambda c: c == "stock.low", 3, None)
                == [f for f in sent if f.startswith(b"stock.low\0")][-3:]
            )
            assert await b.side.history(orders, 0, None) == []
            own = await a.side.history(lambda c: c == "stock.low", 1, None)
            assert own == [sent[-2]], "a host's own messages are history too"
            with_c = await a.side.history(orders, 1, None)
            assert decode_frame(with_c[0]).host == "C"

    run(main())


def test_history_raises_bridge_error_when_redis_is_unreachable(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Peer(redis_server.url, "A") as a:
            await a.ready()
            redis_server.kill()
            await until(lambda: not a.side.connected, 5, "A notices")
            with pytest.raises(BridgeError, match="not reachable"):
                await a.side.history(lambda c: True, 10, None)

    run(main())


# -- bridges as processes, workers as Bus objects --------------------------------------------


STREAM = ("--mode", "stream")


def test_redis_with_aof_restarted_during_a_2000_per_s_stream_loses_nothing(
    redis_factory: Callable[..., RedisServer], bridge_factory: Callable[..., BridgeProcess]
) -> None:
    redis = redis_factory(aof=True)
    a = bridge_factory("host-a", redis_url=redis.url, args=STREAM)
    b = bridge_factory("host-b", redis_url=redis.url, args=STREAM)
    remote_bus, remote = collecting_bus(b, "ticks", "remote")
    total = 10_000
    restart = threading.Thread(target=redis.restart)  # the stream goes on meanwhile
    with Bus(dir=str(a.directory), host="host-a", worker="ticker") as ticker, remote_bus:
        paced(ticker, "ticks", 2000, range(total), {3000: restart.start})
        restart.join(10)
        # A last marker: any replayed duplicate, being older, arrives before it.
        ticker.publish("ticks", "end")
        wait_until(lambda: remote.data()[-1:] == ["end"], 20, "every tick, then the marker")
        assert remote.data() == [*range(total), "end"], "all, in order, none twice"
        assert remote.missed == 0
        status = b.status()["redis"]
        assert status["state"] == "connected" and status["data_lost"] == 0
        assert status["reconnects"] >= 1
        assert a.status()["redis"]["reconnects"] >= 1


def test_bridge_sigkilled_for_5s_resumes_where_it_stopped(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    b = bridge_factory("host-b", redis_url=redis_server.url, args=STREAM)
    remote_bus, remote = collecting_bus(b, "ticks", "remote")
    other_bus, other = collecting_bus(b, "orders.*", "remote-2")
    rate, total = 1000, 8_000
    up: list[float] = []

    def restart() -> None:
        b.start(wait=False)
        up.append(time.monotonic())

    with (
        Bus(dir=str(a.directory), host="host-a", worker="ticker") as ticker,
        remote_bus,
        other_bus,
    ):
        # 5 s down: killed at 1.5 s, restarted at 6.5 s, 1.5 s more after that.
        paced(ticker, "ticks", rate, range(total), {1500: b.kill, 6500: restart})
        assert remote_bus.sync(10) and other_bus.sync(10)
        for n in range(3):
            ticker.publish("orders.paid", n)
        # A last marker: any replayed duplicate, being older, arrives before it.
        ticker.publish("ticks", "end")
        assert ticker.flush(10), (ticker.stats(), a.status())
        wait_until(lambda: remote.data()[-1:] == ["end"], 20, "every tick, then the marker")
        wait_until(lambda: len(other.data()) >= 3, 10, "the other worker's channel")
        assert remote.data() == [*range(total), "end"], "all, in order, none twice"
        assert remote.missed == 0 and not remote.gaps
        assert other.data() == [0, 1, 2]
        during = [t for t, n in remote.events if n != "end" and 2000 <= n < 6500]
        assert min(during) > up[0], "the outage's messages came after the restart"
        assert b.status()["redis"]["data_lost"] == 0


def test_redis_restarted_empty_bridges_notice_and_carry_on(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    b = bridge_factory("host-b", redis_url=redis_server.url, args=STREAM)
    remote_bus, remote = collecting_bus(b, "ticks", "remote")
    with Bus(dir=str(a.directory), host="host-a", worker="ticker") as ticker, remote_bus:
        for n in range(100):
            ticker.publish("ticks", n)
        wait_until(lambda: len(remote.data()) == 100, 10, "before")
        redis_server.restart()  # no AOF: Redis comes back empty
        for bridge in (a, b):
            wait_until(lambda br=bridge: br.status()["redis"]["data_lost"] >= 1, 10, "noticed")
            wait_until(lambda br=bridge: br.status()["redis"]["connected"], 10, "reconnected")
        assert "lost" in b.status()["redis"]["last_data_loss"]
        for n in range(100, 200):
            ticker.publish("ticks", n)
        wait_until(lambda: len(remote.data()) == 200, 10, "new messages flow")
        assert remote.data() == list(range(200))
        assert json.dumps(b.status())  # status answers: no hang


def test_two_redis_connections_per_bridge_in_stream_mode(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    bridge = bridge_factory("host-a", redis_url=redis_server.url, args=STREAM)
    buses = []
    try:
        for n in range(20):
            bus = Bus(dir=str(bridge.directory), host="host-a", worker=f"w-{n}")
            bus.subscribe(f"channel.{n}")
            bus.subscribe("shared.*")
            buses.append(bus)
        for bus in buses:
            assert bus.sync(10)
        assert len(bridge.status()["workers"]) == 20
        wait_until(lambda: bridge.status()["redis"]["connected"], 10, "connected")
        names = sorted(c["name"] for c in clients(redis_server, "host-a"))
        assert names == ["circus-events:host-a:pub", "circus-events:host-a:sub"]
        assert bridge.status()["mode"] == "stream"
    finally:
        for bus in buses:
            bus.close()


def test_xread_count_keeps_a_reply_of_the_largest_entries_within_64_mib() -> None:
    """hiredis holds a whole reply: COUNT shrinks as messages may grow."""
    assert xread_count(1024, 1) == XREAD_COUNT == 1000
    assert xread_count(1024 * 1024, 1) == 63  # the default max_message_bytes
    assert xread_count(1024 * 1024, 4) == 15  # COUNT is per stream
    assert xread_count(256 * 1024 * 1024, 1) == 1  # never 0
    assert xread_count(1024 * 1024, 1) * (1024 * 1024 + 4096) <= XREAD_MAX_BYTES
