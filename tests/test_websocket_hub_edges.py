"""The Hub in the test process, at the edges: what a browser sends that must not
raise or grow the server, reserved channels, resumes cut short, shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import BridgeProcess
from test_websocket import open_client, wait_for
from test_websocket_hub import hub_server

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
