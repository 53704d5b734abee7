"""Across hosts: bridges in separate processes (own directory and host name) and one Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BridgeProcess, RedisServer, WorkerProcess, wait_until
from helpers import Collector, NotRedis, collecting_bus

from circus_events import Bus


def redis_clients(redis: RedisServer) -> list[dict[str, Any]]:
    clients: list[dict[str, Any]] = redis.client().client_list()
    return clients


def test_two_hosts_four_workers_each_receive_everything_once_in_order(
    redis_server: RedisServer,
    bridge_factory: Callable[..., BridgeProcess],
    workers: Callable[..., WorkerProcess],
) -> None:
    hosts = [bridge_factory(h, redis_url=redis_server.url) for h in ("host-a", "host-b")]
    per_host = 5_000
    subscribers = [
        workers(
            "subscriber.py",
            "--dir", str(bridge.directory),
            "--worker", f"{bridge.host}-sub-{n}",
            "--kind", "async" if n % 2 else "sync",
            "--count", str(2 * per_host),
            "--pattern", "orders.*",
        )
        for bridge in hosts
        for n in range(4)
    ]  # fmt: skip
    for worker in subscribers:
        worker.expect_line("READY")
    publishers = [
        workers(
            "publisher.py",
            "--dir", str(bridge.directory),
            "--worker", f"{bridge.host}-pub",
            "--count", str(per_host),
            "--tag", bridge.host,
            "--channels", "orders.paid,orders.shipped",
        )
        for bridge in hosts
    ]  # fmt: skip
    for publisher in publishers:
        publisher.expect_line("DONE", timeout=60)
    for worker in subscribers:
        result = worker.result()
        assert result["missed"] == 0
        for host in ("host-a", "host-b"):
            from_host = [e[1]["i"] for e in result["events"] if e[1]["p"] == host]
            assert from_host == list(range(per_host)), f"{host}: all, once, in order"


def test_exactly_two_redis_connections_per_bridge(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    bridge = bridge_factory("host-a", redis_url=redis_server.url)

    def mine() -> list[dict[str, Any]]:
        return [c for c in redis_clients(redis_server) if "host-a" in c.get("name", "")]

    buses = [Bus(dir=str(bridge.directory), worker="w-0")]
    try:
        buses[0].subscribe("one.channel")
        assert buses[0].sync(10)
        assert len(mine()) == 2
        for n in range(1, 50):
            bus = Bus(dir=str(bridge.directory), worker=f"w-{n}")
            bus.subscribe(f"channel.{n}")
            bus.subscribe("shared.*")
            buses.append(bus)
        for bus in buses:
            assert bus.sync(10)
        assert len(bridge.status()["workers"]) == 50
        assert len(mine()) == 2
    finally:
        for bus in buses:
            bus.close()


def test_redis_killed_for_3s_during_a_stream_loses_nothing_buffered(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url)
    b = bridge_factory("host-b", redis_url=redis_server.url)
    local_bus, local = collecting_bus(a, "ticks", "local-listener")
    remote_bus, remote = collecting_bus(b, "ticks", "remote-listener")
    rate, total = 2000, 12_000
    with Bus(dir=str(a.directory), host="host-a", worker="ticker") as ticker, local_bus, remote_bus:
        start = time.monotonic()
        killed_at = restarted_at = 0.0
        for n in range(total):
            now = time.monotonic()
            if n == 3000:
                redis_server.kill()
                killed_at = now
            if n == 9000:
                redis_server.start()  # same port, after 3 s
                restarted_at = time.monotonic()
            pause = start + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the stream, not synchronisation
            ticker.publish("ticks", n)
        assert ticker.flush(10)
        wait_until(lambda: len(remote.data()) >= total, 30, "every tick on the other host")
        assert remote.data() == list(range(total)), "all, in order, none twice"
        assert remote.missed == 0
        assert local.data() == list(range(total))
        during = [t for t, _ in local.events if killed_at < t < restarted_at]
        assert len(during) > 0.8 * rate * (restarted_at - killed_at), "local delivery went on"
        assert b.status()["redis"]["state"] == "connected"


def test_buffer_cap_drop_count_is_exact(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url, args=("--buffer-max-bytes", "20000"))
    b = bridge_factory("host-b", redis_url=redis_server.url)
    remote_bus, remote = collecting_bus(b, "bulk", "remote")
    total = 2_000
    with Bus(dir=str(a.directory), host="host-a", worker="bulk-publisher") as publisher, remote_bus:
        publisher.publish("bulk", -1)  # seen before the outage, so a hole after it shows
        wait_until(lambda: remote.data() == [-1], 20, "the first message")
        redis_server.kill()
        wait_until(lambda: not a.status()["redis"]["connected"], 15, "bridge A to notice")
        for n in range(total):
            publisher.publish("bulk", n)
        assert publisher.flush(10)
        wait_until(lambda: a.status()["redis"]["dropped"] > 0, 10, "drops to be counted")
        redis_server.start()
        wait_until(lambda: a.status()["redis"]["buffered_messages"] == 0, 30, "the flush")
        dropped = a.status()["redis"]["dropped"]
        publisher.publish("bulk", total)  # one more after the outage reveals the hole
        wait_until(lambda: remote.data() and remote.data()[-1] == total, 30, "the last one")
        received = remote.data()
        assert len(received) - 2 == total - dropped, "drop count equals what never arrived"
        assert received[1:-1] == list(range(dropped, total)), "the oldest were dropped"
        assert remote.missed == dropped, "and the worker was told"


def test_client_kill_pubsub_recovers_within_5s_and_reports_the_gap(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url)
    b = bridge_factory("host-b", redis_url=redis_server.url)
    remote_bus, remote = collecting_bus(b, "pulse", "remote")
    stop = threading.Event()
    sent = [0]

    def pulse() -> None:
        with Bus(dir=str(a.directory), host="host-a", worker="pulser") as pulser:
            while not stop.wait(0.002):  # ~500 msg/s
                pulser.publish("pulse", sent[0])
                sent[0] += 1
            assert pulser.flush(10)

    thread = threading.Thread(target=pulse)
    with remote_bus:
        thread.start()
        try:
            wait_until(lambda: len(remote.data()) > 200, 20, "the stream to flow")
            redis_server.client().client_kill_filter(_type="pubsub")
            killed_at = time.monotonic()
            wait_until(lambda: remote.events[-1][0] > killed_at + 0.5, 10, "delivery to resume")
            resumed_at = next(t for t, _ in remote.events if t > killed_at + 0.1)
            assert resumed_at - killed_at < 5.0
            wait_until(lambda: remote.gaps, 10, "the loss to be reported")
        finally:
            stop.set()
            thread.join(30)
        wait_until(lambda: remote.data()[-1] == sent[0] - 1, 10, "the last pulse")
        assert len(remote.data()) + remote.missed == sent[0]
        assert b.status()["redis"]["reconnects"] >= 1


def test_namespaces_isolate_and_ignore_hosts_drops(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    url = redis_server.url
    shop_a = bridge_factory("host-a", redis_url=url, namespace="shop")
    shop_b = bridge_factory(
        "host-b", redis_url=url, namespace="shop", args=("--ignore-hosts", "host-c")
    )
    shop_c = bridge_factory("host-c", redis_url=url, namespace="shop")
    blog_d = bridge_factory("host-d", redis_url=url, namespace="blog")
    buses = {}
    collectors = {}
    for bridge in (shop_b, blog_d):
        bus = Bus(
            dir=str(bridge.directory), namespace=bridge.namespace, host=bridge.host, worker="l"
        )
        collectors[bridge.host] = Collector()
        bus.on("*")(collectors[bridge.host].on_event)
        assert bus.sync(10)
        buses[bridge.host] = bus
    try:
        for bridge in (shop_a, shop_c, blog_d):
            with Bus(
                dir=str(bridge.directory), namespace=bridge.namespace, host=bridge.host, worker="p"
            ) as p:
                p.publish("news", f"from {bridge.host}")
                assert p.flush()
        wait_until(lambda: "from host-a" in collectors["host-b"].data(), 10, "shop news on b")
        assert collectors["host-b"].data() == ["from host-a"], collectors["host-b"].data()
        with Bus(dir=str(shop_a.directory), namespace="shop", host="host-a", worker="p2") as p:
            p.publish("news", "marker")
            assert p.flush()
        wait_until(lambda: collectors["host-b"].data()[-1:] == ["marker"], 10, "the marker")
        assert collectors["host-b"].data() == ["from host-a", "marker"], "nothing from c or d"
        assert collectors["host-d"].data() == ["from host-d"], "the blog never hears the shop"
        assert shop_b.status()["redis"]["ignored_hosts"] >= 1
    finally:
        for bus in buses.values():
            bus.close()


def test_wrong_password_is_reported_and_the_local_bus_works(
    redis_factory: Callable[..., RedisServer], bridge_factory: Callable[..., BridgeProcess]
) -> None:
    redis = redis_factory(password="right")
    bad_url = f"redis://:wrong@127.0.0.1:{redis.port}/0"
    bridge = bridge_factory("host-a", redis_url=bad_url)
    wait_until(lambda: bridge.status()["redis"]["state"] == "auth_failed", 15, "auth_failed")
    status = bridge.status()
    assert "wrong" not in json.dumps(status), "the password is never shown"
    log = bridge.log.read_text()
    assert "auth" in log.lower() and "Traceback" not in log
    with Bus(dir=str(bridge.directory), worker="a") as a, Bus(dir=str(bridge.directory)) as b:
        events = b.subscribe("local")
        assert b.sync(5)
        a.publish("local", "still works")
        assert events.get(timeout=5).data == "still works"
    human = subprocess.run(
        [sys.executable, "-m", "circus_events", "status", "--dir", str(bridge.directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "auth_failed" in human.stdout


def test_status_all_shows_every_host(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    for host in ("host-a", "host-b"):
        bridge_factory(host, redis_url=redis_server.url, args=("--stats-interval", "0.5"))
    env_url = {"CIRCUS_EVENTS_REDIS_URL": redis_server.url}

    def hosts() -> set[str]:
        result = subprocess.run(
            [sys.executable, "-m", "circus_events", "status", "--all", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**__import__("os").environ, **env_url},
        )
        assert result.returncode == 0, result.stderr
        return {h["host"] for h in json.loads(result.stdout)}

    wait_until(lambda: hosts() == {"host-a", "host-b"}, 15, "both hosts in status --all")


REDIS_COMMANDS = [("status", "--all"), ("leaders",)]


def redis_command(command: tuple[str, ...], url: str, directory: Path) -> tuple[str, float]:
    """Run ``status --all`` or ``leaders`` against ``url``; its error line and duration."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "circus_events", *command, "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CIRCUS_EVENTS_REDIS_URL": url},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr.strip(), elapsed


@pytest.mark.parametrize("command", REDIS_COMMANDS)
def test_a_redis_that_never_answers_fails_within_the_timeout(
    command: tuple[str, ...], short_tmp: Path
) -> None:
    """Their timeout is 2 s; redis-py's own retries (3, with backoff) made it 25 s."""
    with NotRedis(answer=None) as silent:
        _, elapsed = redis_command(command, silent.url(), short_tmp)
    assert elapsed < 2 + 3, f"took {elapsed:.1f}s"  # the timeout plus a start-up margin


@pytest.mark.parametrize("command", REDIS_COMMANDS)
def test_redis_failures_in_status_all_and_leaders_say_what_is_wrong(
    command: tuple[str, ...], redis_factory: Callable[..., RedisServer], short_tmp: Path
) -> None:
    """Worded as the bridge words them, never as redis-py does ("HELLO must be called
    with the client already authenticated", 'Protocol error, got "H"')."""
    protected = redis_factory(password="right")
    bare = f"redis://127.0.0.1:{protected.port}/0"
    with NotRedis(b"HTTP/1.1 400 Bad Request\r\n\r\n") as http:
        cases = {
            bare: f"authentication required: {bare} asks for a password and the URL has none",
            f"redis://:wrong@127.0.0.1:{protected.port}/0": (
                f"authentication failed at redis://:***@127.0.0.1:{protected.port}/0: "
            ),
            http.url(): f"{http.url()} answered something that is not Redis (it began with 'H",
        }
        for url, message in cases.items():
            error, _ = redis_command(command, url, short_tmp)
            assert message in error, error
            assert "wrong" not in error and "HELLO" not in error and "Protocol error" not in error
    with NotRedis(answer=None) as silent:
        error, _ = redis_command(command, silent.url(), short_tmp)
        assert f"{silent.url()} did not answer within 2s" in error, error


@pytest.mark.parametrize("scope", ["host"])
def test_host_scope_never_reaches_redis(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess], scope: str
) -> None:
    a = bridge_factory("host-a", redis_url=redis_server.url)
    b = bridge_factory("host-b", redis_url=redis_server.url)
    remote_bus, remote = collecting_bus(b, "*", "remote")
    local_bus, local = collecting_bus(a, "*", "local")
    with remote_bus, local_bus, Bus(dir=str(a.directory), host="host-a", worker="p") as p:
        p.publish("secret", "host only", scope=scope)  # type: ignore[arg-type]
        p.publish("public", "everyone")
        assert p.flush()
        wait_until(lambda: remote.data() == ["everyone"], 10, "the cluster message")
        wait_until(lambda: sorted(local.data()) == ["everyone", "host only"], 10, "both locally")
        assert a.status()["redis"]["published"] == 1
