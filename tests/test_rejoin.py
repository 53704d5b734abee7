"""A bridge that starts or restarts while workers run: the rejoin hold (issue 12),
the honest heartbeat round trip, and ``tail``'s notes on its bridge.

Real bridge processes, real worker processes and a real redis-server; a worker
is SIGSTOPped to come back late, deterministically.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BridgeProcess, RedisServer, WorkerProcess, wait_until
from helpers import SidePeer, clients, until

from circus_events import Bus
from circus_events.bridge.redis_side import RedisSide
from circus_events.bridge.rejoin import (
    MAX_FILE_BYTES,
    WORKERS_FILE,
    frame_stamp,
    load_workers,
    save_workers,
)
from circus_events.bridge.roundtrip import RoundTrip
from circus_events.bridge.stream_side import CURSOR_SAVE_INTERVAL
from circus_events.protocol.chunks import LOCAL_FRAME_MAX, split_frame
from circus_events.protocol.rejoin import REJOIN_MIN_WAIT

pytestmark = pytest.mark.timeout(90)

CLI = [sys.executable, "-m", "circus_events"]
STREAM = ("--mode", "stream")


def saved_workers(bridge: BridgeProcess) -> list[str]:
    path = bridge.directory / bridge.namespace / WORKERS_FILE
    try:
        workers: list[str] = json.loads(path.read_text())["workers"]
    except (OSError, ValueError):
        return []
    return workers


def rejoin(bridge: BridgeProcess) -> dict[str, object]:
    status = bridge.status()
    assert status is not None
    state: dict[str, object] = status["rejoin"]
    return state


def from_redis(bridge: BridgeProcess) -> int:
    status = bridge.status()
    return 0 if status is None else int(status["counters"]["from_redis"])


def subscriber(
    workers: Callable[..., WorkerProcess], bridge: BridgeProcess, name: str, count: int
) -> WorkerProcess:
    worker = workers(
        "subscriber.py", "--dir", str(bridge.directory), "--worker", name,
        "--pattern", "orders.*", "--count", str(count), "--idle", "30", "--timeout", "80",
        env={"CIRCUS_EVENTS_HOST": bridge.host},
    )  # fmt: skip
    worker.expect_line("READY")
    return worker


def test_restarted_bridge_holds_delivery_until_a_late_subscriber_is_back(
    bridge: BridgeProcess, workers: Callable[..., WorkerProcess]
) -> None:
    """SIGKILL the bridge; a subscriber is stopped meanwhile; the publisher queues 50.
    The new bridge waits for the subscriber the old one had: both get all 60, in order."""
    subs = [subscriber(workers, bridge, f"host-a/sub/{n}", 60) for n in (1, 2)]
    with Bus(dir=str(bridge.directory), host=bridge.host, worker="host-a/pub/1") as bus:
        for i in range(10):
            bus.publish("orders.paid", i)
        assert bus.flush(10)
        wait_until(
            lambda: {"host-a/sub/1", "host-a/sub/2"} <= set(saved_workers(bridge)),
            15,
            "the bridge to save its workers",
        )
        bridge.kill()
        late = subs[0].process
        late.send_signal(signal.SIGSTOP)  # it cannot reconnect before we let it
        try:
            for i in range(10, 60):
                bus.publish("orders.paid", i)  # queued by the client while no bridge runs
            bridge.start()
            wait_until(lambda: rejoin(bridge)["held_total"], 15, "frames held")
            state = rejoin(bridge)
            assert state["state"] == "holding" and state["missing_workers"] >= 1, state
        finally:
            late.send_signal(signal.SIGCONT)
        wait_until(lambda: rejoin(bridge)["state"] == "open", 15, "the hold to end")
        state = rejoin(bridge)
        assert state["reason"] == "workers back", state
        assert REJOIN_MIN_WAIT <= float(str(state["released_after"])) < 15
        for sub in subs:
            got = sub.result(60)
            assert [data for _, data in got["events"]] == list(range(60))
            assert got["missed"] == 0


def test_a_bridge_killed_while_holding_has_not_saved_its_cursor_past_what_it_held(
    redis_server: RedisServer,
    bridge_factory: Callable[..., BridgeProcess],
    workers: Callable[..., WorkerProcess],
) -> None:
    """Stream mode: a restarted bridge reads the stream into its rejoin hold and is
    SIGKILLed before the hold opens. Its saved cursor must not have moved past what
    it held, or the next bridge skips those entries for good (the chaos loop lost
    two seconds of messages that way). Both subscribers get all 110, in order."""
    # The stream side waits up to RESUME_WAIT (3 s) for the stopped worker's
    # subscriptions, then reads into the rejoin hold, which waits up to 20 s.
    a = bridge_factory(
        "host-a", redis_url=redis_server.url, args=(*STREAM, "--rejoin-timeout", "20")
    )
    bridge_factory("host-b", redis_url=redis_server.url, args=STREAM)
    subs = [subscriber(workers, a, f"host-a/sub/{n}", 110) for n in (1, 2)]
    directory = str(a.directory.parent / "host-b")
    with Bus(dir=directory, host="host-b", worker="host-b/pub/1") as bus:
        for i in range(10):
            bus.publish("orders.paid", i)
        assert bus.flush(10)
        wait_until(
            lambda: {"host-a/sub/1", "host-a/sub/2"} <= set(saved_workers(a)),
            15,
            "the bridge to save its workers",
        )
        a.kill()
        late = subs[1].process
        late.send_signal(signal.SIGSTOP)  # keeps the next bridge's hold on
        try:
            a.start()
            for i in range(10, 110):
                bus.publish("orders.paid", i)
            assert bus.flush(10)
            wait_until(lambda: from_redis(a) >= 100, 20, "the entries read (and held)")
            # The fault under test: killed a second into its hold, after five
            # cursor-save intervals (scenario timing, not synchronisation).
            time.sleep(5 * CURSOR_SAVE_INTERVAL)
            assert rejoin(a)["state"] == "holding"
            a.kill()
        finally:
            late.send_signal(signal.SIGCONT)
        a.start()
        for sub in subs:
            got = sub.result(60)
            assert [data for _, data in got["events"]] == list(range(110))
            assert got["missed"] == 0


def test_bridge_started_first_holds_nothing(bridge: BridgeProcess) -> None:
    """No saved workers and no backlog: the window closes on its own, nothing waits."""
    with Bus(dir=str(bridge.directory), host=bridge.host, worker="host-a/w/1", echo=True) as bus:
        received = bus.subscribe("orders.*")
        assert bus.sync(10)
        bus.publish("orders.paid", 1)
        assert received.get(timeout=10).data == 1
        wait_until(lambda: rejoin(bridge)["state"] == "open", 10, "the window to close")
    state = rejoin(bridge)
    assert state["reason"] == "no backlog" and state["held_total"] == 0, state


def test_hold_off_and_its_bounds(bridge_factory: Callable[..., BridgeProcess]) -> None:
    """A saved worker that never comes back: the hold ends at rejoin_timeout, or at
    once at hold_max_bytes; the frames held are delivered either way. 0 turns it off."""
    off = bridge_factory("host-off", args=("--rejoin-timeout", "0"))
    assert rejoin(off)["state"] == "open" and rejoin(off)["reason"] == "off"
    cases = [
        ("host-tiny", ("--hold-max-bytes", "1"), "hold_max_bytes"),
        ("host-slow", ("--rejoin-timeout", "2"), "rejoin_timeout"),
    ]
    for host, args, reason in cases:
        bridge = bridge_factory(host, start=False, args=args)
        folder = bridge.directory / bridge.namespace
        folder.mkdir(mode=0o700)
        save_workers(str(folder / WORKERS_FILE), [f"{host}/ghost"])
        bridge.start()
        assert rejoin(bridge)["state"] == "holding"
        with Bus(dir=str(bridge.directory), host=host, worker=f"{host}/w/1", echo=True) as bus:
            received = bus.subscribe("x")
            assert bus.sync(10)
            bus.publish("x", "first")
            bus.publish("x", "large" * 20_000)  # 100 kB: travels in pieces, held alike
            assert received.get(timeout=15).data == "first"
            assert received.get(timeout=15).data == "large" * 20_000
        state = rejoin(bridge)
        assert state["reason"] == reason and state["held_total"] >= 1, state
        assert state["missing_workers"] == 1


def test_stopping_while_holding_delivers_and_keeps_awaiting(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory("host-stop", start=False, args=("--rejoin-timeout", "60"))
    folder = bridge.directory / bridge.namespace
    folder.mkdir(mode=0o700)
    save_workers(str(folder / WORKERS_FILE), ["host-stop/ghost"])
    bridge.start()
    with Bus(dir=str(bridge.directory), host="host-stop", worker="host-stop/w/1", echo=True) as bus:
        received = bus.subscribe("x")
        assert bus.sync(10)
        bus.publish("x", "held")
        assert bus.flush(10)  # a flush marker is not held
        assert rejoin(bridge)["held_total"] == 1
        assert bridge.terminate() == 0
        assert received.get(timeout=10).data == "held"
    assert saved_workers(bridge) == ["host-stop/ghost", "host-stop/w/1"]


# -- the saved list of workers, read as hostile input ----------------------------------


def test_saved_workers_round_trip_and_bad_files(short_tmp: Path) -> None:
    path = str(short_tmp / WORKERS_FILE)
    assert load_workers(path) == []  # no file
    save_workers(path, ["b/w/2", "a/w/1"])
    assert load_workers(path) == ["a/w/1", "b/w/2"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    cases = {
        b"not json": [],
        b'{"workers": "a"}': [],
        b"[1, 2]": [],
        b'{"workers": ["ok/1", 7, "bad\\u0000id", "ok/2"]}': ["ok/1", "ok/2"],
        b" " * (MAX_FILE_BYTES + 1): [],
        b"[" * 100_000: [],  # past the JSON parser's depth: RecursionError, not a crash
    }
    for data, expected in cases.items():
        os.unlink(path)
        Path(path).write_bytes(data)
        assert load_workers(path) == expected, data[:40]
    os.unlink(path)
    target = short_tmp / "elsewhere.json"
    target.write_text('{"workers": ["planted"]}')
    os.symlink(target, path)
    assert load_workers(path) == []  # never followed
    save_workers(path, ["a/w/1"])  # replaces the link itself, not its target
    assert not os.path.islink(path) and load_workers(path) == ["a/w/1"]
    assert json.loads(target.read_text()) == {"workers": ["planted"]}


def test_frame_stamp_reads_the_header_time() -> None:
    from helpers import make_frame  # noqa: PLC0415

    assert frame_stamp(make_frame("x", 1)) == 1.5
    assert frame_stamp(b"no nul here") is None
    assert frame_stamp(b"x\0short") is None
    big = make_frame("x", 1, payload=b"p" * (2 * LOCAL_FRAME_MAX))
    assert all(frame_stamp(piece) is None for piece in split_frame(big))


# -- the heartbeat round trip ------------------------------------------------------------


def test_round_trip_counts_only_the_current_generation() -> None:
    rtt = RoundTrip()
    rtt.measured(10.0, 0, 10.002)
    assert rtt.ms == 2.0
    old = rtt.generation
    rtt.restart()
    assert rtt.ms is None
    rtt.measured(0.0, old, 11.0)  # sent before the reconnection, drained late
    assert rtt.ms is None


class Peer(SidePeer):
    def __init__(self, url: str, host: str, **options: object) -> None:
        super().__init__(url, host, **options)
        self.side = RedisSide(self.config, deliver=self.frames.extend)

    async def ready(self, timeout: float = 10.0) -> None:
        await until(lambda: self.status()["connected"], timeout, "connected")


def test_heartbeat_rtt_after_a_reconnection_is_from_the_new_connection(
    redis_server: RedisServer,
) -> None:
    """A heartbeat from before a reconnection (as one left in an aborted connection's
    kernel queue arrives) does not show as the round trip; a fresh one does."""

    async def main() -> None:
        async with Peer(redis_server.url, "A") as a:
            await a.ready()
            await until(lambda: a.status()["heartbeat_rtt_ms"] is not None, 10, "a heartbeat")
            side = a.side
            link = side._link
            before = link.rtt.generation
            stale_sent = link.loop.time() - 11.0
            for client in clients(redis_server, "A"):
                redis_server.client().client_kill_filter(_id=client["id"])
            await until(lambda: link.rtt.generation > before and a.status()["connected"], 10)
            stale = b"%b:1:%.6f:%d" % (side._token, stale_sent, before)
            side._heartbeat_back(stale)
            shown = a.status()["heartbeat_rtt_ms"]
            assert shown is None or shown < 5000, shown  # not the 11 s of the stale one
            await until(lambda: a.status()["heartbeat_rtt_ms"] is not None, 10, "a new one")
            assert a.status()["heartbeat_rtt_ms"] < 5000

    asyncio.run(main())


# -- tail ------------------------------------------------------------------------------


def test_tail_says_when_its_bridge_goes_and_comes_back(bridge: BridgeProcess) -> None:
    tail = subprocess.Popen(
        [*CLI, "tail", "--json", "--dir", str(bridge.directory), "--host", bridge.host, "x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: bridge.status()["subscriptions"] >= 2, 15, "tail to subscribe")
        # (the watch's first look happens before tail subscribes)
        bridge.kill()
        assert tail.stderr is not None
        assert "went away" in tail.stderr.readline()
        bridge.start()
        assert "is back" in tail.stderr.readline()
        with Bus(dir=str(bridge.directory), host=bridge.host, worker="host-a/p/1") as bus:
            wait_until(lambda: bridge.status()["subscriptions"] >= 3, 15, "tail to resubscribe")
            bus.publish("x", {"n": 1})
            assert bus.flush(10)
        assert tail.stdout is not None
        assert json.loads(tail.stdout.readline())["data"] == {"n": 1}  # stdout: events only
    finally:
        tail.terminate()
        tail.communicate(timeout=20)
