"""The Hub in the test process: a websockets server on a real port over a real bridge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import BridgeProcess, RedisServer, free_port
from test_websocket import open_client, probe_until_all_hear, wait_for

from circus_events import AsyncBus, Bus, Gap
from circus_events.websocket import DIRECT_CHANNEL, Hub, Limits, client_js


@contextlib.asynccontextmanager
async def hub_server(
    directory: Path,
    worker: str = "hub-w",
    bus_options: dict[str, Any] | None = None,
    **hub_options: Any,
) -> AsyncIterator[tuple[Hub, str]]:
    async with AsyncBus(dir=str(directory), worker=worker, **(bus_options or {})) as bus:
        hub = Hub(bus, **hub_options)
        port = free_port()
        async with websockets.serve(
            hub.serve_websockets, "127.0.0.1", port, **hub.websockets_options()
        ):
            try:
                yield hub, f"ws://127.0.0.1:{port}/events"
            finally:
                await hub.close()


def test_relay_broadcast_and_one_bus_subscription_per_pattern(bridge: BridgeProcess) -> None:
    async def scenario() -> None:
        async with (
            hub_server(bridge.directory) as (hub, url),
            AsyncBus(dir=str(bridge.directory), worker="other") as other,
        ):
            hub.relay("news.*")
            clients = [await open_client(url) for _ in range(3)]
            for client in clients:
                await client.send(type="subscribe", pattern="orders.*")
            await probe_until_all_hear(other, clients, "orders.probe")
            assert hub.stats()["patterns"] == ["news.*", "orders.*"]
            await probe_until_all_hear(other, clients, "news.probe")  # relayed: no subscribe

            # broadcast reaches this hub's sockets (no echo from the bus) and other workers.
            elsewhere = other.subscribe("news.*")
            await other.sync()
            await hub.broadcast("news.flash", {"n": 1})
            assert (await elsewhere.get(timeout=5)).data == {"n": 1}
            await wait_for(lambda: all(c.events("news.flash") for c in clients), 5, "broadcast")
            assert all(len(c.events("news.flash")) == 1 for c in clients)

            # The last socket to unsubscribe closes the bus subscription.
            for client in clients:
                await client.send(type="unsubscribe", pattern="orders.*")
                await client.send(type="unsubscribe", pattern="orders.*")  # twice: harmless
            await wait_for(lambda: hub.stats()["patterns"] == ["news.*"], 5, "unsubscribe")
            # send_to a socket of this very worker: delivered without the bus.
            await hub.send_to(clients[1].socket_id, "private", {"x": 1})
            await wait_for(lambda: clients[1].events("private"), 5, "local send_to")
            assert not clients[0].events("private")
            with pytest.raises(ValueError, match="not a socket id"):
                await hub.send_to("no-hash-here", "c", 1)
            await hub.send_to("hub-w#999.gone", "private", 1)  # gone: dropped quietly
            for client in clients:
                await client.ws.close()

    asyncio.run(scenario())


def test_max_connections_at_the_limit_and_close_says_going_away(bridge: BridgeProcess) -> None:
    async def scenario() -> None:
        async with hub_server(bridge.directory, limits=Limits(max_connections=2)) as (hub, url):
            first, second = await open_client(url), await open_client(url)
            async with websockets.connect(url) as third:
                with pytest.raises(websockets.ConnectionClosed):
                    await third.recv()
                assert third.close_code == 1013
            assert hub.stats()["full"] == 1
            await hub.close()
            await hub.close()  # twice is fine
            for client in (first, second):
                assert client.task is not None
                await asyncio.wait_for(client.task, 5)
                assert client.ws.close_code == 1001
            with pytest.raises(Exception, match="closed"):
                hub.relay("x")

    asyncio.run(scenario())


def test_direct_channel_and_failing_hooks_are_refused_not_raised(bridge: BridgeProcess) -> None:
    def authorize(websocket: Any) -> str:
        if "boom" in websocket.request.path:
            raise RuntimeError("auth backend down")
        return "p"

    def can_publish(principal: Any, channel: str) -> bool:
        if channel == "explode":
            raise RuntimeError("hook bug")
        return True

    async def scenario() -> None:
        async with hub_server(bridge.directory, authorize=authorize, can_publish=can_publish) as (
            _hub,
            url,
        ):
            async with websockets.connect(url + "?boom") as refused:
                with pytest.raises(websockets.ConnectionClosed):
                    await refused.recv()
                assert refused.close_code == 1008
            client = await open_client(url)
            await client.send(type="publish", channel=DIRECT_CHANNEL, data=1)
            await client.send(type="publish", channel="explode", data=1)
            await wait_for(lambda: len(client.of("error")) == 2, 5, "two refusals")
            assert "hub's own channel" in client.of("error")[0]["message"]
            assert "not allowed" in client.of("error")[1]["message"]
            await client.ws.close()

    asyncio.run(scenario())


def test_a_gap_on_the_bus_reaches_the_sockets_that_lost_the_events(bridge: BridgeProcess) -> None:
    """The hub's bus subscription overflows (a queue of 4, a burst of 200 while
    the hub's loop is busy): its sockets get a gap frame; the bus's own on_gap
    is still told; a socket on another pattern hears nothing of it."""
    bus_gaps: list[Gap] = []
    count = 200

    async def scenario() -> None:
        options = {"queue_size": 4, "on_gap": bus_gaps.append}
        async with (
            hub_server(bridge.directory, bus_options=options) as (hub, url),
            AsyncBus(dir=str(bridge.directory), worker="prober") as prober,
        ):
            client, other = await open_client(url), await open_client(url)
            await client.send(type="subscribe", pattern="burst")
            await other.send(type="subscribe", pattern="elsewhere")
            await probe_until_all_hear(prober, [client], "burst")
            await probe_until_all_hear(prober, [other], "elsewhere")
            with (
                Bus(dir=str(bridge.directory), worker="burster") as burster,
                Bus(dir=str(bridge.directory), worker="watcher") as watcher,
            ):
                watch = watcher.subscribe("burst")
                watcher.sync(10)
                # On the hub's loop, blocking it: the burst piles up in the hub's
                # bus socket, to be read at once when the loop runs again.
                for n in range(count):
                    burster.publish("burst", {"i": n})
                burster.flush()
                for _ in range(count):
                    watch.get(timeout=10)
            await wait_for(lambda: client.of("gap"), 10, "the gap frame")
            await wait_for(
                lambda: (
                    len([e for e in client.events("burst") if "i" in e["data"]])
                    + sum(g["missed"] for g in client.of("gap"))
                    >= count
                ),
                10,
                "the events and gaps to add up",
            )
            got = [e["data"]["i"] for e in client.events("burst") if "i" in e["data"]]
            missed = sum(g["missed"] for g in client.of("gap"))
            assert {g["channel"] for g in client.of("gap")} == {"burst"}
            assert got == sorted(set(got)) and len(got) + missed == count
            assert hub.stats()["bus_gaps"] >= 1
            assert any(g.reason == "queue_full" and g.pattern == "burst" for g in bus_gaps)
            assert not other.of("gap")
            for c in (client, other):
                await c.ws.close()

    asyncio.run(scenario())


def test_resume_in_pubsub_mode_answers_with_a_gap(bridge: BridgeProcess) -> None:
    async def scenario() -> None:
        async with (
            hub_server(bridge.directory) as (_hub, url),
            AsyncBus(dir=str(bridge.directory), worker="pub") as bus,
        ):
            client = await open_client(url)
            await client.send(type="subscribe", pattern="ticks", last_id="x~1~ticks~9")
            await wait_for(lambda: client.of("gap"), 10, "the gap")
            assert client.of("gap") == [{"type": "gap", "channel": "ticks", "missed": None}]
            await probe_until_all_hear(bus, [client], "ticks")  # then the live feed
            await client.ws.close()

    asyncio.run(scenario())


def test_resume_replays_only_what_was_missed_from_one_history(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    bridge = bridge_factory("host-a", redis_url=redis_server.url, args=("--mode", "stream"))

    async def scenario() -> None:
        async with (
            hub_server(bridge.directory, limits=Limits(resume_max_events=5)) as (_hub, url),
            AsyncBus(dir=str(bridge.directory), worker="pub") as bus,
        ):
            for n in range(10):
                await bus.publish("log", {"n": n})
            assert await bus.flush()
            first = await open_client(url)
            await first.send(type="subscribe", pattern="log", last_id="nothing-like-it")
            # last_id not found in the newest 5 (resume_max_events): a gap, then those 5.
            await wait_for(lambda: len(first.events("log")) == 5, 10, "the replay")
            assert first.of("gap")[0]["missed"] is None
            assert [e["data"]["n"] for e in first.events("log")] == [5, 6, 7, 8, 9]
            seventh = first.events("log")[2]
            second = await open_client(url)
            await second.send(
                type="subscribe", pattern="log", last_id=seventh["id"], last_time=seventh["time"]
            )
            await bus.publish("log", {"n": 10})
            await wait_for(lambda: len(second.events("log")) == 3, 10, "the rest")
            assert [e["data"]["n"] for e in second.events("log")] == [8, 9, 10]
            assert not second.of("gap")
            await wait_for(lambda: len(first.events("log")) == 6, 10, "the live one")
            for client in (first, second):
                await client.ws.close()

    asyncio.run(scenario())


def test_client_js_is_served_by_both_adapters(bridge: BridgeProcess) -> None:
    starlette = pytest.importorskip("starlette.testclient")

    async def over_websockets() -> bytes:
        async with hub_server(bridge.directory) as (_hub, url):
            http = url.replace("ws://", "http://").replace("/events", "/static/client.js")
            return await asyncio.to_thread(lambda: urllib.request.urlopen(http, timeout=5).read())

    assert asyncio.run(over_websockets()) == client_js()

    async def make_hub() -> Hub:
        return Hub(AsyncBus(dir=str(bridge.directory), worker="asgi-w"))

    hub = asyncio.run(make_hub())
    with starlette.TestClient(hub.asgi) as http:
        answer = http.get("/events/client.js")
        assert answer.status_code == 200 and answer.content == client_js()
        assert answer.headers["content-type"].startswith("text/javascript")
        assert http.get("/events/other").status_code == 404
    asyncio.run(hub.bus.close())


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_js_client_connects_subscribes_reconnects_and_resumes(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess], short_tmp: Path
) -> None:
    """client.js under node (its WebSocket is the browser's API): subscribe, get events,
    lose the connection, come back and resume from the last id without a hole."""
    assert NODE is not None
    if b"--experimental-websocket" not in subprocess.run(
        [NODE, "--help"], capture_output=True, check=False
    ).stdout and "WebSocket" not in subprocess.run(
        [NODE, "-e", "console.log(typeof WebSocket)"], capture_output=True, text=True, check=False
    ).stdout.replace("undefined", ""):
        pytest.skip("this node has no WebSocket")
    bridge = bridge_factory("host-a", redis_url=redis_server.url, args=("--mode", "stream"))
    script = short_tmp / "client-test.js"
    script.write_text(
        """
const CircusEvents = require(process.argv[2]);
const events = new CircusEvents(process.argv[3], {minDelay: 50, maxDelay: 200});
const seen = [];
let dropped = false;
events.addEventListener("open", (e) => console.log(JSON.stringify({open: e.detail})));
events.subscribe("js.*", (event) => {
  seen.push(event.data.n);
  console.log(JSON.stringify({n: event.data.n}));
  if (event.data.n === 4 && !dropped) { dropped = true; events._ws.close(); }
  if (event.data.n === 19) {
    console.log(JSON.stringify({done: seen}));
    events.close();
  }
});
"""
    )

    async def scenario() -> list[int]:
        async with (
            hub_server(bridge.directory) as (_hub, url),
            AsyncBus(dir=str(bridge.directory), worker="pub") as bus,
        ):
            node = await asyncio.create_subprocess_exec(
                NODE, "--experimental-websocket", str(script),
                str(Path(__file__).parent.parent / "circus_events/static/client.js"), url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert node.stdout is not None
            try:
                assert "open" in json.loads(await node.stdout.readline())
                # Publish event 0 until the JS client reports it (its subscription is
                # then live), then the rest in order.
                line = b""
                while not line:
                    await bus.publish("js.tick", {"n": 0})
                    with contextlib.suppress(TimeoutError):
                        line = await asyncio.wait_for(node.stdout.readline(), 0.2)
                first = json.loads(line)["n"]
                assert first == 0
                for n in range(1, 20):
                    await bus.publish("js.tick", {"n": n})
                    await asyncio.sleep(0.05)  # a steady stream across the reconnect
                opened = 0
                while True:
                    message = json.loads(await asyncio.wait_for(node.stdout.readline(), 20))
                    opened += "open" in message
                    if "done" in message:
                        assert opened == 1, "the client reconnected once"
                        result: list[int] = message["done"]
                        return result
            finally:
                with contextlib.suppress(ProcessLookupError):
                    node.kill()
                await node.wait()

    seen = asyncio.run(scenario())
    # Probes of n=0 may repeat before the first arrived; after it, each once, in order.
    assert seen[seen.index(1) :] == list(range(1, 20))
