"""The Hub in the test process, at the edges: what a browser sends that must not
raise or grow the server, reserved channels, resumes cut short, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
import websockets
from conftest import BridgeProcess, RedisServer
from test_websocket import open_client, probe_until_all_hear, wait_for
from test_websocket_hub import hub_server

from circus_events import AsyncBus
from circus_events._exceptions import ChannelError

BAD_LAST_TIMES = ["9" * 400, "1e999", "-1e999", "NaN", "-Infinity", "1e308", "-1e308", "-5"]


def test_last_times_no_clock_gives_are_refused_never_raised(
    bridge: BridgeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with hub_server(bridge.directory) as (hub, url):
            client = await open_client(url)
            for last_time in BAD_LAST_TIMES:
                frame = '{"type":"subscribe","pattern":"a","last_id":"x","last_time":'
                await client.ws.send(frame + last_time + "}")
            await wait_for(lambda: len(client.of("error")) == len(BAD_LAST_TIMES), 10, "errors")
            assert all("'last_time'" in e["message"] for e in client.of("error"))
            assert hub.stats()["bad_frames"] == len(BAD_LAST_TIMES)
            # In range, however early: a resume (pub/sub mode: its gap).
            await client.send(type="subscribe", pattern="a", last_id="x", last_time=1)
            await wait_for(lambda: client.of("gap"), 10, "the resume's gap")
            await client.ws.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_resuming_again_and_again_keeps_no_finished_task(bridge: BridgeProcess) -> None:
    async def scenario() -> None:
        async with hub_server(bridge.directory) as (hub, url):
            client = await open_client(url)
            for _ in range(300):
                await client.send(type="subscribe", pattern="news.*", last_id="x", last_time=1)
                await client.send(type="unsubscribe", pattern="news.*")
            await client.send(type="shout")  # answered once the hub read all the rest
            await wait_for(lambda: client.of("error"), 10, "the hub to read every frame")
            socket = hub._sockets[client.socket_id]
            # The writer and the keepalive stay; every replay's task is gone.
            await wait_for(lambda: len(socket.tasks) == 2, 10, "the replays to finish")
            assert socket.writer in socket.tasks
            assert not socket.resumes
            await client.ws.close()

    asyncio.run(scenario())


def test_leader_events_never_reach_a_browser_whatever_its_pattern(bridge: BridgeProcess) -> None:
    """'@leader.*' itself is refused; '*', '?leader.*', '[@]leader.*' and a relayed
    '*' match it too, but the hub's feeds never carry an '@' channel."""

    async def scenario() -> None:
        async with (
            hub_server(bridge.directory) as (hub, url),
            AsyncBus(dir=str(bridge.directory), worker="runner") as runner,
        ):
            with pytest.raises(ChannelError, match="never reach browsers"):
                hub.relay("@leader.*")
            hub.relay("*")
            clients = [await open_client(url) for _ in range(4)]
            patterns = ["*", "?leader.*", "[@]leader.*", None]  # None: the relay's only
            for client, pattern in zip(clients, patterns, strict=True):
                if pattern is not None:
                    await client.send(type="subscribe", pattern=pattern)
                    await client.send(type="subscribe", pattern="probe*")
            await probe_until_all_hear(runner, clients, "probe.before")
            watcher = runner.subscribe("@leader.job")
            await runner.sync()
            async with runner.leader("job", ttl=0.6) as leadership:
                assert await leadership.wait(15)
                assert (await watcher.get(timeout=5)).data["event"] == "elected"
                # Later on every feed (the leader event went to all of them first).
                await probe_until_all_hear(runner, clients, "probe.after")
            for client in clients:
                assert not [f for f in client.frames if "@" in f.get("channel", "")]
                await client.ws.close()

    asyncio.run(scenario())


def test_a_closed_hub_turns_new_sockets_away_with_going_away(bridge: BridgeProcess) -> None:
    """1001, not 1008: the JS client takes 1008 as final and would never come back."""

    async def scenario() -> None:
        async with hub_server(bridge.directory) as (hub, url):
            await hub.close()
            async with websockets.connect(url) as late:
                with pytest.raises(websockets.ConnectionClosed):
                    await late.recv()
                assert late.close_code == 1001
            assert hub.stats()["refused"] == 1

    asyncio.run(scenario())


def test_resubscribing_while_resuming_gets_the_new_resume_not_the_old_gap(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """subscribe(last_id), unsubscribe, subscribe(last_id) again: the first replay,
    cut short, must neither end the second nor leave its gap behind."""
    bridge = bridge_factory("host-a", redis_url=redis_server.url, args=("--mode", "stream"))

    async def scenario() -> None:
        async with (
            hub_server(bridge.directory) as (_hub, url),
            AsyncBus(dir=str(bridge.directory), worker="pub") as bus,
        ):
            for n in range(3):
                await bus.publish("race.a", {"n": n})
            assert await bus.flush()
            first = await open_client(url)
            await first.send(type="subscribe", pattern="race.*", last_id="nothing-like-it")
            await wait_for(lambda: len(first.events("race")) == 3, 10, "the history")
            zero = first.events("race")[0]
            client = await open_client(url)
            again = {"pattern": "race.*", "last_id": zero["id"], "last_time": zero["time"]}
            await client.send(type="subscribe", **again)
            await client.send(type="unsubscribe", pattern="race.*")
            await client.send(type="subscribe", **again)
            await wait_for(lambda: len(client.events("race")) >= 2, 10, "the second replay")
            await bus.publish("race.a", {"n": 3})  # and the live feed after it
            await wait_for(lambda: client.events("race")[-1]["data"]["n"] == 3, 10, "live")
            got = [e["data"]["n"] for e in client.events("race")]
            # The first replay may have sent 1, 2 before the unsubscribe was read.
            assert got[-3:] == [1, 2, 3] and set(got) == {1, 2, 3}
            assert not client.of("gap")
            for each in (first, client):
                await each.ws.close()

    asyncio.run(scenario())
