"""bus.leader(role): the API on both buses, hand-over speed, a stopped leader's fate."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BridgeProcess, wait_until
from helpers import until

from circus_events import AsyncBus, Bus
from circus_events._exceptions import ArgumentError, UsageError
from circus_events.bench.leaders import Cluster, check


def test_one_leader_on_a_host_without_redis_hands_over_at_once_on_release(
    bridge: BridgeProcess,
) -> None:
    directory = str(bridge.directory)
    with (
        Bus(dir=directory, worker="a") as a,
        Bus(dir=directory, worker="b") as b,
        Bus(dir=directory, worker="watcher") as watcher,
    ):
        events = watcher.subscribe("@leader.job")
        assert watcher.sync(5)
        first = a.leader("job", ttl=0.6)
        changes: list[Any] = []
        first.on_change(changes.append)
        assert first.wait(15), "the bridge waits one ttl after it starts, then elects"
        assert first.is_leader and first.token > 0 and first.holder == "a"
        second = b.leader("job", ttl=0.6)
        assert not second.wait(0.8), "one leader at a time"
        assert second.holder == "a"
        event = events.get(timeout=5)
        assert event.data["event"] == "elected" and event.data["holder"] == "a"
        started = time.monotonic()
        first.release()
        assert second.wait(5)
        took = time.monotonic() - started
        assert took < 1.0, f"hand-over took {took:.3f}s"
        assert not first.is_leader and second.token > first.token
        shown = cli("leaders", "--dir", directory, "--json")
        assert [(r["role"], r["holder"], r["token"]) for r in json.loads(shown)] == [
            ("job", "b", second.token)
        ]
        assert "leader job (cluster): b on host-a" in cli("status", "--dir", directory)
        wait_until(lambda: len(changes) == 2, 5, "both changes reported")
        assert [c.elected for c in changes] == [True, False]
        assert changes[1].reason == "released" and changes[1].until >= changes[0].since
        with pytest.raises(UsageError):
            b.leader("job")
        with pytest.raises(ArgumentError):
            b.leader("other", ttl=0)
        with pytest.raises(ArgumentError):
            b.leader("@other")
        with pytest.raises(ArgumentError):
            b.leader("other", scope="planet")
        # Closing the bus releases its candidacies (and hands over: nobody left here).
        with b.leader("solo", ttl=0.6) as solo:
            assert solo.wait(5)
        assert not solo.is_leader and solo.released
    status = bridge.status()
    assert status is not None and isinstance(status["leaders"], list)


def test_async_bus_leads_with_coroutine_callbacks_and_async_with(bridge: BridgeProcess) -> None:
    async def main() -> None:
        async with AsyncBus(dir=str(bridge.directory), worker="c") as bus:
            seen: list[Any] = []

            async def on_change(change: Any) -> None:
                seen.append(change)

            async with bus.leader("job", ttl=0.6, scope="host") as lead:
                lead.on_change(on_change)
                assert await lead.wait(15)
                assert lead.is_leader and lead.holder == "c" and lead.scope == "host"
                assert "leader" in repr(lead)
            assert not lead.is_leader and not await lead.wait(0.1)
            await until(lambda: len(seen) == 2, 5, "both changes")
            assert [c.elected for c in seen] == [True, False]
            again = bus.leader("job", ttl=0.6, scope="host")
            assert await again.wait(5)
        assert not again.is_leader  # close() released it

    asyncio.run(main())


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "circus_events", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_log(path: str) -> list[dict[str, Any]]:
    with open(path) as log:
        return [json.loads(line) for line in log if line.endswith("\n")]


@pytest.mark.timeout(300)
def test_close_and_sigterm_hand_over_within_a_second_and_a_stopped_leader_is_fenced(
    short_tmp: Path,
) -> None:
    """ttl 3 s: hand-overs must not wait for the lease. Then a leader SIGSTOPped
    between its check and its write learns on SIGCONT that it lost, and its
    guarded write is refused."""
    with Cluster(str(short_tmp), hosts=2, workers_per_host=2, roles=("job",), ttl=3.0) as cluster:
        cluster.wait_all_roles()
        cluster.settle()
        handovers = []
        for how in ("close", "sigterm"):
            worker, token = cluster.log.current["job"]
            started = time.monotonic()
            if how == "close":
                cluster.tell(worker, "exit")
            else:
                cluster.workers[worker][0].send_signal(signal.SIGTERM)
            new = cluster.log.wait_new_term("job", token, 10)
            assert new is not None, f"nobody took over after {how}"
            handovers.append(new["since"] - started)
            cluster.retire(worker)
        assert max(handovers) < 1.0, f"hand-over times {handovers}"
        assert cluster.lease_redis is not None
        worker, token = cluster.log.current["job"]
        leases = json.loads(
            cli("leaders", "--json", env={"CIRCUS_EVENTS_REDIS_URL": cluster.lease_redis.url})
        )
        assert [(r["role"], r["scope"], r["holder"], r["token"]) for r in leases] == [
            ("job", "cluster", worker, token)
        ]
    short = short_tmp / "stop"
    short.mkdir()
    with Cluster(str(short), hosts=2, workers_per_host=1, roles=("job",), ttl=0.6) as cluster:
        cluster.wait_all_roles()
        cluster.settle()
        worker, token = cluster.log.current["job"]
        process = cluster.workers[worker][0]
        cluster.tell(worker, "pause job")
        wait_until(lambda: _state(process.pid) == "T", 20, "the leader to stop itself")
        new = cluster.log.wait_new_term("job", token, 20)
        assert new is not None and new["w"] != worker
        wait_until(
            lambda: any(
                r["e"] == "write" and r["w"] == new["w"] and r["ok"]
                for r in read_log(cluster.log_path)
            ),
            20,
            "the new leader's first write",
        )
        process.send_signal(signal.SIGCONT)
        records = wait_until(
            lambda: (
                (log := read_log(cluster.log_path))
                and any(r["e"] == "write" and r["w"] == worker and not r["ok"] for r in log)
                and log
            ),
            20,
            "the stale write after SIGCONT",
        )
        resumed = next(r for r in records if r["e"] == "resumed")
        assert resumed["leader"] is False, "it must know it lost before it acts"
        stale = [r for r in records if r["e"] == "write" and r["w"] == worker and not r["ok"]]
        assert stale[0]["token"] == token, "its stale write is refused"
        lost = wait_until(
            lambda: next(
                (r for r in read_log(cluster.log_path) if r["e"] == "lost" and r["w"] == worker),
                None,
            ),
            20,
            "the stopped leader's lost change",
        )
        assert lost["until"] <= new["since"], "it stopped believing before the next term"
        cluster.close_all()
        check(cluster)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]
