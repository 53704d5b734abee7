"""The events plugin inside a real circusd."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from conftest import CircusHost, wait_until

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
