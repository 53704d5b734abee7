"""examples/websocket: the FastAPI app under circus, 4 processes on each of two hosts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from conftest import RedisServer, free_port, query_bridge, wait_until
from test_websocket import Client, open_client, wait_for

pytest.importorskip("fastapi")

EXAMPLE = Path(__file__).parent.parent / "examples" / "websocket"
PROCESSES = 4


class ExampleHost:
    """One circusd running examples/websocket/circus.ini."""

    def __init__(self, home: Path, host: str, redis_url: str) -> None:
        self.home, self.host = home, host
        self.port = free_port()
        self.sockets = home / "s"
        self.sockets.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
        env.update(
            CIRCUS_EVENTS_DIR=str(self.sockets),
            CIRCUS_EVENTS_HOST=host,
            CIRCUS_EVENTS_REDIS_URL=redis_url,
            EXAMPLE_PORT=str(self.port),
            EXAMPLE_PYTHON=sys.executable,
            EXAMPLE_DIR=str(EXAMPLE),
            EXAMPLE_ENDPOINT_PORT=str(free_port()),
            EXAMPLE_PUBSUB_PORT=str(free_port()),
            EXAMPLE_STATS_PORT=str(free_port()),
        )
        circusd = Path(sys.executable).parent / "circusd"
        self.log = home / "circusd.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(circusd), "--log-output", str(self.log), str(EXAMPLE / "circus.ini")],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def url(self, token: str = "alice") -> str:
        return f"ws://127.0.0.1:{self.port}/api/wss?token={token}"

    def hub_workers(self) -> list[str]:
        status = query_bridge(self.sockets)
        return [w for w in (status or {}).get("workers", []) if "/websocket-example/" in w]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def example_hosts(redis_server: RedisServer, short_tmp: Path) -> Iterator[list[ExampleHost]]:
    hosts: list[ExampleHost] = []
    try:
        for name in ("host-a", "host-b"):
            hosts.append(ExampleHost(short_tmp / name, name, redis_server.url))
        for host in hosts:
            wait_until(
                lambda host=host: len(host.hub_workers()) == PROCESSES,  # type: ignore[misc]
                60,
                f"{PROCESSES} app processes on {host.host}: {host.log}",
            )
        yield hosts
    finally:
        for host in hosts:
            host.stop()


def dispatch(host: ExampleHost, channel: str, data: object, token: str = "admin") -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{host.port}/api/dispatch/{channel}?token={token}",
        data=json.dumps(data).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.timeout(180)
def test_example_relays_dispatch_and_chat_across_hosts_and_refuses_bad_tokens(
    example_hosts: list[ExampleHost],
) -> None:
    a, b = example_hosts

    async def scenario() -> None:
        clients: list[Client] = []
        for host in (a, b):
            clients += [await open_client(host.url()) for _ in range(8)]
        async with websockets.connect(a.url("mallory")) as refused:
            with pytest.raises(websockets.ConnectionClosed):
                await refused.recv()
            assert refused.close_code == 1008
        for client in clients:
            await client.send(type="subscribe", pattern="chat.*")
        # dispatch (admin only) reaches every socket on both hosts through relay("news.*").
        assert await asyncio.to_thread(dispatch, a, "news.flash", {"n": 0}, "bob") == 403
        deadline = asyncio.get_running_loop().time() + 30
        n = 0
        while not all(c.events("news.") for c in clients):
            assert asyncio.get_running_loop().time() < deadline, "news never reached everyone"
            assert await asyncio.to_thread(dispatch, a, "news.flash", {"n": n}) == 200
            n += 1
            await asyncio.sleep(0.2)  # probing rate, not synchronisation
        # A browser on host A chats; every socket on host B (and A) hears it.
        talker = clients[0]
        await talker.send(type="publish", channel="chat.lobby", data={"text": "hi"})
        await wait_for(lambda: all(c.events("chat.") for c in clients), 15, "the chat line")
        assert all(len(c.events("chat.")) == 1 for c in clients)
        await talker.send(type="publish", channel="news.fake", data={"text": "no"})
        await wait_for(lambda: talker.of("error"), 10, "the refusal")
        for client in clients:
            await client.ws.close()

    asyncio.run(scenario())


def test_example_hosts_run_four_processes_each(example_hosts: list[ExampleHost]) -> None:
    for host in example_hosts:
        workers = host.hub_workers()
        assert len(workers) == PROCESSES
        assert all(w.startswith(f"{host.host}/") for w in workers)
