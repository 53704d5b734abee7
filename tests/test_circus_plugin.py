"""The events plugin inside a real circusd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from conftest import CircusHost, RedisServer, wait_until

from circus_events import Bus


def test_plugin_runs_the_bridge_and_workers_receive(
    circus_factory: Callable[..., CircusHost],
) -> None:
    host = circus_factory("solo")
    wait_until(lambda: len(host.ready_workers()) == 2, 60, "two recorders ready")
    with Bus(dir=str(host.sockets), worker="test-publisher") as bus:
        bus.publish("orders.paid", {"id": 1})
        assert bus.flush()
    wait_until(
        lambda: sum(1 for e in host.events() if e.get("channel") == "orders.paid") == 2,
        20,
        "both recorders to receive",
    )


def test_plugin_killed_is_restarted_and_workers_carry_on(
    circus_factory: Callable[..., CircusHost],
) -> None:
    host = circus_factory("solo")
    wait_until(lambda: len(host.ready_workers()) == 2, 60, "two recorders ready")
    first = host.bridge_status()
    assert first is not None
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(
        lambda: (s := host.bridge_status()) is not None and s["pid"] != first["pid"],
        60,
        "circus to restart the plugin",
    )
    wait_until(lambda: len(host.bridge_status()["workers"]) >= 2, 30, "workers to reconnect")
    with Bus(dir=str(host.sockets), worker="test-publisher") as bus:
        bus.publish("after.restart", "hello")
        assert bus.flush()
    wait_until(
        lambda: sum(1 for e in host.events() if e.get("channel") == "after.restart") == 2,
        20,
        "the same recorders to receive again",
    )
    assert len(host.ready_workers()) == 2, "the workers were not restarted"


def test_incr_decr_publish_process_events(circus_factory: Callable[..., CircusHost]) -> None:
    host = circus_factory("solo")
    wait_until(lambda: len(host.ready_workers()) == 2, 60, "two recorders ready")
    with Bus(dir=str(host.sockets), worker="watcher") as bus:
        lifecycle = bus.subscribe("circus.recorder.*")
        assert bus.sync()
        host.ctl("incr", "recorder")
        wait_until(lambda: len(host.ready_workers()) == 3, 60, "the new worker ready")
        spawn = lifecycle.get(timeout=30)
        assert spawn.channel == "circus.recorder.spawn" and spawn.data["pid"] > 0
        host.ctl("decr", "recorder")
        seen = [lifecycle.get(timeout=30) for _ in range(1)]
        while not any(e.channel == "circus.recorder.reap" for e in seen):
            seen.append(lifecycle.get(timeout=30))
        reap = next(e for e in seen if e.channel == "circus.recorder.reap")
        assert reap.data["pid"] > 0 and reap.host == "solo"


def test_bad_plugin_option_is_logged_and_circusd_keeps_running(
    circus_factory: Callable[..., CircusHost],
) -> None:
    cases = {
        "bogus_key = 1": "bogus_key: unknown option",
        "buffer_max_bytes = lots": "buffer_max_bytes: 'lots' is not a whole number",
        "redis_url = redis://:hunter2@127.0.0.1:6379/0": "redis_url: contains a password",
    }
    for n, (line, message) in enumerate(cases.items()):
        host = circus_factory(f"bad{n}", plugin_extra=line)
        log = host.sockets / "events-plugin.log"
        wait_until(lambda log=log, m=message: log.exists() and m in log.read_text(), 60, message)
        assert "hunter2" not in log.read_text()
        wait_until(lambda host=host: "recorder: active" in host.ctl("status"), 30, "circusd")
        assert host.process is not None and host.process.poll() is None
        host.stop()


def test_two_circus_hosts_share_events_through_redis(
    redis_server: RedisServer, circus_factory: Callable[..., CircusHost]
) -> None:
    a = circus_factory("circ-a", redis_server.url)
    b = circus_factory("circ-b", redis_server.url)
    for host in (a, b):
        wait_until(lambda host=host: len(host.ready_workers()) == 2, 60, f"{host.host} ready")
    with Bus(dir=str(a.sockets), host="circ-a", worker="circ-a/app/1") as bus:
        bus.publish("orders.paid", {"id": 42})
        assert bus.flush()
    for host in (a, b):
        wait_until(
            lambda host=host: sum(e.get("channel") == "orders.paid" for e in host.events()) == 2,
            20,
            f"both recorders on {host.host}",
        )
        assert all(
            e["host"] == "circ-a" for e in host.events() if e.get("channel") == "orders.paid"
        )


def test_incr_on_one_host_is_seen_by_a_tail_on_the_other(
    redis_server: RedisServer, circus_factory: Callable[..., CircusHost]
) -> None:
    a = circus_factory("circ-a", redis_server.url)
    b = circus_factory("circ-b", redis_server.url)
    for host in (a, b):
        wait_until(lambda host=host: len(host.ready_workers()) == 2, 60, f"{host.host} ready")
    tail = subprocess.Popen(
        [sys.executable, "-m", "circus_events", "tail", "--json", "--dir", str(b.sockets),
         "--host", "circ-b", "circus.recorder.*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(b.bridge_status()["workers"]) >= 3, 20, "the tail to join host b")
        # (host b's recorders subscribe to everything, so Redis already sends it all)
        a.ctl("incr", "recorder")
        wait_until(lambda: len(a.ready_workers()) == 3, 60, "the new worker on host a")
        # The new worker receives events at once.
        with Bus(dir=str(a.sockets), host="circ-a", worker="circ-a/app/2") as bus:
            bus.publish("after.incr", 1)
            assert bus.flush()
        wait_until(
            lambda: sum(e.get("channel") == "after.incr" for e in a.events()) == 3,
            20,
            "3 recorders",
        )
        a.ctl("decr", "recorder")
        seen: list[dict[str, Any]] = []
        assert tail.stdout is not None
        while not {"circus.recorder.spawn", "circus.recorder.reap"} <= {e["channel"] for e in seen}:
            line = tail.stdout.readline()
            assert line, tail.stderr.read() if tail.stderr else "tail ended"
            seen.append(json.loads(line))
        assert all(e["host"] == "circ-a" for e in seen)
        reap = next(e for e in seen if e["channel"] == "circus.recorder.reap")
        assert reap["data"]["pid"] > 0
    finally:
        tail.terminate()
        tail.communicate(timeout=20)
