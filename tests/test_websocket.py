"""The websocket hub against real servers: uvicorn (ASGI adapter) and the websockets
server, each in its own process over a real bridge per host and one Redis;
real websocket clients (the websockets library) in the test process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from conftest import BridgeProcess, RedisServer, WorkerProcess, free_port
from websockets.asyncio.client import ClientConnection, connect

from circus_events import AsyncBus

#: Sockets spread over the 2 hosts x 2 workers (the issue asks for 200).
SOCKETS = 200
#: Events published on host A in the fan-out test.
EVENTS = 100


@dataclass
class Server:
    host: str
    worker: str
    kind: str
    port: int
    bridge: BridgeProcess
    process: WorkerProcess

    def url(self, token: str = "alice", path: str = "/events") -> str:
        return f"ws://127.0.0.1:{self.port}{path}?token={token}"


@dataclass
class Cluster:
    bridges: dict[str, BridgeProcess]
    servers: list[Server]
    start_server: Callable[..., Server]


@pytest.fixture
def cluster_factory(
    redis_server: RedisServer,
    bridge_factory: Callable[..., BridgeProcess],
    workers: Callable[..., WorkerProcess],
) -> Iterator[Callable[..., Cluster]]:
    """2 hosts (a bridge each, one Redis); on each, hub workers: one per adapter."""

    def make(mode: str = "pubsub", per_host: int = 2, **options: Any) -> Cluster:
        bridges = {
            host: bridge_factory(host, redis_url=redis_server.url, args=("--mode", mode))
            for host in ("host-a", "host-b")
        }

        def start_server(host: str, kind: str, worker: str, **extra: Any) -> Server:
            port = free_port()
            args = ["--dir", str(bridges[host].directory), "--worker", worker, "--host", host]
            args += ["--port", str(port), "--kind", kind]
            for key, value in {**options, **extra}.items():
                args += [f"--{key.replace('_', '-')}", str(value)]
            process = workers("ws_server.py", *args)
            process.expect_line("READY", timeout=30)
            return Server(host, worker, kind, port, bridges[host], process)

        servers = [
            start_server(host, kind, f"{host}/ws-{n}")
            for host in bridges
            for n, kind in enumerate(["asgi", "websockets"][:per_host])
        ]
        return Cluster(bridges, servers, start_server)

    yield make


@dataclass
class Client:
    """A websocket client that records every frame it gets."""

    ws: ClientConnection
    socket_id: str = ""
    frames: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def events(self, prefix: str = "") -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "event" and f["channel"].startswith(prefix)]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                self.frames.append(json.loads(message))


async def open_client(url: str, **kwargs: Any) -> Client:
    ws = await connect(url, compression=None, open_timeout=30, **kwargs)
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome"
    client = Client(ws, welcome["socket_id"])
    client.task = asyncio.create_task(client._read())
    return client


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)  # poll interval, not synchronisation


async def probe_until_all_hear(bus: AsyncBus, clients: list[Client], channel: str) -> None:
    """Publish on ``channel`` until every client got one: every subscription is live
    on every hub, bridge and Redis along the way."""
    deadline = time.monotonic() + 30
    while not all(c.events(channel) for c in clients):
        assert time.monotonic() < deadline, "the subscriptions never became live"
        await bus.publish(channel, {"probe": True})
        await asyncio.sleep(0.1)  # probing rate, not synchronisation


async def close_all(clients: list[Client]) -> None:
    for client in clients:
        await client.ws.close()
        if client.task is not None:
            await client.task


async def server_stats(bus: AsyncBus, worker: str) -> dict[str, Any]:
    replies = bus.subscribe("test.stats")
    try:
        for _ in range(50):
            await bus.publish("test.control", {"op": "stats", "worker": worker})
            with contextlib.suppress(TimeoutError):
                while True:
                    event = await replies.get(timeout=0.2)
                    if event.data["worker"] == worker:
                        stats: dict[str, Any] = event.data
                        return stats
        raise AssertionError(f"{worker} never answered")
    finally:
        replies.close()


@pytest.mark.timeout(240)
def test_every_socket_on_two_hosts_gets_each_event_once_in_order_and_send_to_reaches_one(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    a = cluster.bridges["host-a"]

    async def scenario() -> None:
        clients = [
            await open_client(cluster.servers[n % len(cluster.servers)].url())
            for n in range(SOCKETS)
        ]
        assert len({c.socket_id for c in clients}) == SOCKETS
        for client in clients:
            await client.send(type="subscribe", pattern="orders.*")
        async with AsyncBus(dir=str(a.directory), worker="test-publisher", host="host-a") as bus:
            await probe_until_all_hear(bus, clients, "orders.probe")
            for n in range(EVENTS):
                await bus.publish("orders.paid", {"i": n})
            await wait_for(
                lambda: all(len(c.events("orders.paid")) >= EVENTS for c in clients),
                60,
                "every socket to get every event",
            )
            await asyncio.sleep(0.2)  # a duplicate would arrive right behind
            for client in clients:
                assert [e["data"]["i"] for e in client.events("orders.paid")] == list(range(EVENTS))
                assert {e["host"] for e in client.events("orders.paid")} == {"host-a"}
                assert not client.of("gap") and not client.of("error")

            # send_to: from a worker on host A to one socket on host B.
            sender = next(s for s in cluster.servers if s.host == "host-a")
            target = next(
                c for c in clients if c.socket_id.startswith("host-b/") and "ws-1" in c.socket_id
            )
            await bus.publish(
                "test.control",
                {
                    "op": "send_to",
                    "worker": sender.worker,
                    "socket": target.socket_id,
                    "channel": "private.note",
                    "data": {"hello": target.socket_id},
                },
            )
            await wait_for(lambda: target.events("private."), 10, "the direct message")
            await asyncio.sleep(0.3)  # time for a stray copy elsewhere to show up
            got = [c for c in clients if c.events("private.")]
            assert got == [target]
            [note] = target.events("private.")
            assert note["data"] == {"hello": target.socket_id} and note["direct"] is True
            assert note["origin"] == sender.worker and note["host"] == "host-a"
        await close_all(clients)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["asgi", "websockets"])
def test_refused_authorize_closes_with_1008(
    cluster_factory: Callable[..., Cluster], kind: str
) -> None:
    cluster = cluster_factory(per_host=0)
    server = cluster.start_server("host-a", kind, "host-a/ws-x")

    async def scenario() -> None:
        for token in ("bad", ""):
            async with connect(server.url(token)) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1008
        endpoint = server.url("bad", "/endpoint") if kind == "asgi" else server.url("bad")
        async with connect(endpoint) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        # A good token is welcome, through hub.asgi and through hub.serve in an endpoint.
        paths = ["/events", "/endpoint"] if kind == "asgi" else ["/events"]
        for path in paths:
            client = await open_client(server.url("alice", path))
            assert client.socket_id.startswith(server.worker + "#")
            await close_all([client])

    asyncio.run(scenario())


def test_can_subscribe_and_can_publish_are_enforced(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    on_a = [s for s in cluster.servers if s.host == "host-a"]
    on_b = [s for s in cluster.servers if s.host == "host-b"]

    async def scenario() -> None:
        reader = await open_client(on_a[0].url("reader"))
        writer = await open_client(on_a[1].url("writer"))
        listeners = [await open_client(s.url("alice")) for s in on_b]
        await reader.send(type="subscribe", pattern="secret.plans")
        await wait_for(lambda: reader.of("error"), 10, "the refusal")
        assert "not allowed" in reader.of("error")[0]["message"]
        for client in [reader, *listeners]:
            await client.send(type="subscribe", pattern="chat.*")
        # A listener may not publish (the default), a writer only to chat.*.
        await listeners[0].send(type="publish", channel="chat.room", data="no")
        await writer.send(type="publish", channel="orders.paid", data="no")
        await wait_for(lambda: listeners[0].of("error") and writer.of("error"), 10, "refusals")
        assert "not allowed" in writer.of("error")[0]["message"]
        deadline = time.monotonic() + 30
        n = 0
        while not all(c.events("chat.") for c in [reader, *listeners]):
            assert time.monotonic() < deadline, "chat never arrived"
            await writer.send(type="publish", channel="chat.room", data={"n": n})
            n += 1
            await asyncio.sleep(0.1)  # probing rate, not synchronisation
        for client in [reader, *listeners]:
            assert all(e["data"] != "no" for e in client.events())
        # The writer's own hub delivers to its local sockets too (here: the reader on A).
        assert reader.events("chat.")[0]["origin"] == on_a[1].worker
        await close_all([reader, writer, *listeners])

    asyncio.run(scenario())


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("kind", "close_bytes"),
    [("websockets", 10**9), ("asgi", 10**9), ("websockets", 800_000)],
    ids=["websockets-gap", "asgi-gap", "websockets-1013"],
)
def test_a_stuck_socket_gets_a_gap_or_1013_and_never_slows_the_others(
    cluster_factory: Callable[..., Cluster], kind: str, close_bytes: int
) -> None:
    cluster = cluster_factory(per_host=0)
    server = cluster.start_server(
        "host-a", kind, "host-a/ws-s", queue_bytes=200_000, close_bytes=close_bytes
    )
    count = 4000
    chunk = 50  # events per round: 100 kB, half a reader's queue
    payload = "x" * 2000  # 4000 events of 2 kB: 8 MB, past every buffer on the way

    async def scenario() -> None:
        others = [await open_client(server.url()) for _ in range(4)]
        # The stuck client: a small receive buffer, and it never reads.
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.port))
        stuck_ws = await connect(server.url(), sock=raw, compression=None, max_queue=1)
        for client in others:
            await client.send(type="subscribe", pattern="flood*")
        await stuck_ws.send(json.dumps({"type": "subscribe", "pattern": "flood*"}))
        async with AsyncBus(dir=str(server.bridge.directory), worker="flooder") as bus:
            await probe_until_all_hear(bus, others, "flood.probe")
            # In rounds the readers keep up with (a reader slower than the publisher
            # would rightly lose too): the stuck socket falls behind all the same.
            for first in range(0, count, chunk):
                for n in range(first, first + chunk):
                    await bus.publish("flood", {"i": n, "pad": payload})
                await wait_for(
                    lambda n=n: all(len(c.events("flood")) > n for c in others),
                    60,
                    "the other sockets to get everything",
                )
            for client in others:
                assert [e["data"]["i"] for e in client.events("flood") if "i" in e["data"]] == (
                    list(range(count))
                )
                assert not client.of("gap")
            stats = await server_stats(bus, server.worker)
        assert stats["dropped"] > 0
        if close_bytes < 10**9:
            assert stats["closed_slow"] == 1
            stuck_ws.transport.abort()  # the server cut it: no close handshake to wait for
            await stuck_ws.wait_closed()
        else:
            # Now read the stuck socket: a prefix, the gap where it lost events, the rest.
            received: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError):
                while True:
                    received.append(json.loads(await asyncio.wait_for(stuck_ws.recv(), 2)))
            got = [
                f["data"]["i"] for f in received if f["type"] == "event" and f["channel"] == "flood"
            ]
            missed = sum(
                f["missed"] for f in received if f["type"] == "gap" and f["channel"] == "flood"
            )
            assert missed > 0
            assert got == sorted(set(got))  # in order, none twice
            assert len(got) + missed == count  # what it got and what it was told it lost
            await stuck_ws.close()
        await close_all(others)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["asgi", "websockets"])
def test_a_peer_that_vanishes_without_a_close_frame_goes_within_two_ping_intervals(
    cluster_factory: Callable[..., Cluster], kind: str
) -> None:
    cluster = cluster_factory(per_host=0)
    ping = 0.5
    server = cluster.start_server("host-a", kind, "host-a/ws-p", ping=ping)
    # A client in another process, frozen with SIGSTOP: its kernel keeps the TCP
    # connection up, but nothing answers a ping any more.
    code = (
        "import asyncio, sys\n"
        "from websockets.asyncio.client import connect\n"
        "async def main():\n"
        f"    async with connect({server.url()!r}) as ws:\n"
        "        print(await ws.recv(), flush=True)\n"
        "        await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert b"welcome" in client.stdout.readline()

        async def scenario() -> float:
            async with AsyncBus(dir=str(server.bridge.directory), worker="watcher") as bus:
                assert (await server_stats(bus, server.worker))["connections"] == 1
                os.kill(client.pid, signal.SIGSTOP)
                stopped = time.monotonic()
                while (await server_stats(bus, server.worker))["connections"]:
                    assert time.monotonic() - stopped < 10 * ping, "the dead peer stayed"
                    await asyncio.sleep(0.05)  # polling interval, not synchronisation
                return time.monotonic() - stopped

        took = asyncio.run(scenario())
        # Two intervals, plus the stats round trip and the close handshake's wait.
        assert took < 2 * ping + 0.5 + 2.0
    finally:
        os.kill(client.pid, signal.SIGCONT)
        client.kill()
        client.wait(10)
        client.stdout.close()  # type: ignore[union-attr]


GARBAGE: list[str | bytes] = [
    "not json",
    "[1,2,3]",
    '{"type":"nope"}',
    '{"type":"subscribe"}',
    '{"type":"subscribe","pattern":"@leader.x"}',
    '{"type":"publish","channel":"chat.x","data":1}',  # alice may not publish
    '{"type":"unsubscribe","pattern":5}',
    "[" * 5000 + "]" * 5000,
    "x" * (64 * 1024 + 1),  # over max_frame_bytes: an error frame, not a close
    b"\x00\xff binary",
    "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["asgi", "websockets"])
def test_ten_thousand_garbage_frames_leave_the_server_serving(
    cluster_factory: Callable[..., Cluster], kind: str
) -> None:
    cluster = cluster_factory(per_host=0)
    per_socket = 100
    server = cluster.start_server("host-a", kind, "host-a/ws-g", max_abuse=per_socket)

    async def abuse(index: int) -> None:
        client = await open_client(server.url())
        for n in range(per_socket):
            await client.ws.send(GARBAGE[(index + n) % len(GARBAGE)])
        await wait_for(lambda: len(client.of("error")) == per_socket, 30, "every error frame")
        await client.ws.send("one too many")
        await asyncio.wait_for(client.task, 10)  # type: ignore[arg-type]
        assert client.ws.close_code == 1008

    async def scenario() -> None:
        for batch in range(10):
            await asyncio.gather(*(abuse(batch * 10 + i) for i in range(10)))
        healthy = await open_client(server.url())
        await healthy.send(type="subscribe", pattern="after")
        async with AsyncBus(dir=str(server.bridge.directory), worker="after") as bus:
            await probe_until_all_hear(bus, [healthy], "after")
            stats = await server_stats(bus, server.worker)
        assert stats["bad_frames"] >= 100 * per_socket
        assert stats["closed_abuse"] == 100
        await close_all([healthy])

    asyncio.run(scenario())


@pytest.mark.timeout(240)
def test_resume_in_stream_mode_after_two_seconds_away_gets_every_event_once(
    cluster_factory: Callable[..., Cluster],
    workers: Callable[..., WorkerProcess],
) -> None:
    cluster = cluster_factory(mode="stream", per_host=0)
    server = cluster.start_server("host-b", "asgi", "host-b/ws-r")
    a = cluster.bridges["host-a"]
    rate, count = 500, 4000  # 8 s of events

    async def scenario() -> None:
        events: list[dict[str, Any]] = []
        gaps: list[dict[str, Any]] = []
        client = await open_client(server.url())
        await client.send(type="subscribe", pattern="ticks")
        async with AsyncBus(dir=str(a.directory), worker="prober") as bus:
            await probe_until_all_hear(bus, [client], "ticks")
        publisher = workers(
            "publisher.py", "--dir", str(a.directory), "--worker", "ticker",
            "--count", str(count), "--rate", str(rate), "--channels", "ticks",
        )  # fmt: skip
        await wait_for(lambda: len(client.events("ticks")) > 2 + rate, 30, "a second of ticks")
        await client.ws.close()
        assert client.task is not None
        await client.task
        events += [e for e in client.events("ticks") if e["origin"] == "ticker"]
        gaps += client.of("gap")
        away = time.monotonic()
        await asyncio.sleep(2.0)  # the disconnection under test, not synchronisation
        last = events[-1]
        client = await open_client(server.url())
        await client.send(
            type="subscribe", pattern="ticks", last_id=last["id"], last_time=last["time"]
        )
        try:
            await wait_for(
                lambda: len(events) + len(client.events("ticks")) >= count, 60, "every tick"
            )
        except AssertionError as exc:  # say which ticks are missing, and what the socket got
            got = {
                e["data"]["i"] for e in events + client.events("ticks") if e["origin"] == "ticker"
            }
            missing = sorted(set(range(count)) - got)
            raise AssertionError(
                f"{exc}: {len(missing)} missing, from {missing[:3]} to {missing[-3:]}; "
                f"gaps {client.of('gap')}, errors {client.of('error')}"
            ) from None
        assert time.monotonic() - away > 2.0
        await asyncio.sleep(0.3)  # a duplicate would arrive right behind
        events += [e for e in client.events("ticks") if e["origin"] == "ticker"]
        gaps += client.of("gap")
        publisher.expect_line("DONE", timeout=30)
        assert not gaps
        assert [e["data"]["i"] for e in events] == list(range(count))
        await close_all([client])

    asyncio.run(scenario())
