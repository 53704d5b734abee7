"""The circus-events command against a real bridge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import BridgeProcess

from circus_events import Bus
from circus_events._config import default_host

CLI = [sys.executable, "-m", "circus_events"]


def run(
    *args: str, stdin: str | None = None, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command's outcome; ``env`` is added to this process's environment."""
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def start_tail(bridge: BridgeProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "tail", "--dir", str(bridge.directory), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_tail_subscription(bridge: BridgeProcess) -> None:
    from conftest import wait_until  # noqa: PLC0415

    wait_until(lambda: bridge.status()["subscriptions"] >= 2, 15, "tail to subscribe")


def test_publish_then_tail_json(bridge: BridgeProcess) -> None:
    tail = start_tail(bridge, "--json", "--count", "2", "orders.*")
    wait_for_tail_subscription(bridge)
    first = run("publish", "--dir", str(bridge.directory), "orders.paid", '{"id": 42}')
    assert first.returncode == 0, first.stderr
    second = run("publish", "--dir", str(bridge.directory), "--raw", "orders.note", "plain text")
    assert second.returncode == 0, second.stderr
    out, err = tail.communicate(timeout=20)
    assert tail.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["channel"], e["data"]) for e in lines] == [
        ("orders.paid", {"id": 42}),
        ("orders.note", "plain text"),
    ]
    # An event carries its publisher's host: `publish` was given no --host (and no
    # CIRCUS_EVENTS_HOST), so it is this machine's name, not the bridge's "host-a".
    assert [e["host"] for e in lines] == [default_host(), default_host()]


def test_publish_each_stdin_line(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory)) as bus:
        events = bus.subscribe("lines")
        assert bus.sync()
        result = run(
            "publish", "--dir", str(bridge.directory), "lines", "-", stdin='1\n"two"\n\n[3]\n'
        )
        assert result.returncode == 0, result.stderr
        assert [events.get(timeout=5).data for _ in range(3)] == [1, "two", [3]]


def test_tail_human_lines_show_time_host_origin_channel_data(bridge: BridgeProcess) -> None:
    tail = start_tail(bridge, "--count", "1", "greet")
    wait_for_tail_subscription(bridge)
    with Bus(dir=str(bridge.directory), worker="w-7", host="host-a") as bus:
        bus.publish("greet", {"hello": "world"})
        assert bus.flush()
    out, _ = tail.communicate(timeout=20)
    assert tail.returncode == 0
    line = out.strip()
    assert "host-a" in line and "w-7" in line and "greet" in line and '{"hello": "world"}' in line


def test_tail_stops_cleanly_on_ctrl_c(bridge: BridgeProcess) -> None:
    import signal  # noqa: PLC0415

    tail = start_tail(bridge, "*")
    wait_for_tail_subscription(bridge)
    tail.send_signal(signal.SIGINT)
    _, err = tail.communicate(timeout=20)
    assert tail.returncode == 130
    assert "Traceback" not in err


def test_status_shows_workers_and_counters(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory), worker="visible-worker") as bus:
        bus.publish("x", 1)
        assert bus.flush()
        result = run("status", "--dir", str(bridge.directory), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert "visible-worker" in report["workers"]
        assert report["counters"]["accepted"] >= 1
        human = run("status", "--dir", str(bridge.directory))
        assert "visible-worker" in human.stdout and "accepted=" in human.stdout


def test_status_when_no_bridge_runs(short_tmp: Path) -> None:
    result = run("status", "--dir", str(short_tmp))
    assert result.returncode == 1
    assert "no bridge answers" in result.stderr and "Traceback" not in result.stderr


def test_bad_input_gives_clear_errors(short_tmp: Path) -> None:
    cases = [
        (["publish", "--dir", str(short_tmp), "bad*channel", "1"], "glob character"),
        (["publish", "--dir", str(short_tmp), "ok", "{not json"], "not valid JSON"),
        (["bridge", "--dir", str(short_tmp), "--mode", "carrier-pigeon"], "Invalid value"),
        (["bridge", "--dir", str(short_tmp), "--max-message-bytes", "lots"], "--max-message-bytes"),
        (["bridge", "--dir", str(short_tmp), "--redis-url", "http://x"], "--redis-url"),
        (["tail", "--dir", str(short_tmp), "bad[pattern"], "without its ']'"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_publish_fails_clearly_when_no_bridge_takes_it(short_tmp: Path) -> None:
    result = run("publish", "--dir", str(short_tmp), "--timeout", "0.5", "x", "1")
    assert result.returncode == 1
    assert "bridge" in result.stderr and "Traceback" not in result.stderr


def test_help_has_worked_examples() -> None:
    for command in ("bridge", "tail", "publish", "status"):
        result = run(command, "--help")
        assert result.returncode == 0
        assert "Examples:" in result.stdout and "circus-events" in result.stdout


def test_tail_exits_when_the_bridge_refuses_every_subscription(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(args=("--max-patterns", "0"))
    result = run("tail", "--dir", str(bridge.directory), "x.*", "y.*")
    assert result.returncode == 1, result.stderr
    assert "the bridge refused every subscription of this tail" in result.stderr
    assert "max_patterns (0)" in result.stderr and "Traceback" not in result.stderr


def test_tail_goes_on_while_one_subscription_stands(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    from conftest import wait_until  # noqa: PLC0415

    bridge = bridge_factory(args=("--max-patterns", "0"))
    tail = start_tail(bridge, "--count", "1", "x.*", "exact")
    wait_until(lambda: bridge.counters()["refused_subscriptions"] >= 1, 15, "the refusal")
    wait_for_tail_subscription(bridge)
    assert run("publish", "--dir", str(bridge.directory), "exact", '"here"').returncode == 0
    out, err = tail.communicate(timeout=20)
    assert tail.returncode == 0, err
    assert "here" in out


def test_tail_stops_quietly_when_its_reader_goes(bridge: BridgeProcess) -> None:
    """``circus-events tail '*' | head -n 1``: once stdout's pipe is closed, the next
    event ends tail (status 0, no traceback) rather than a logged error per event."""
    from conftest import wait_until  # noqa: PLC0415

    tail = start_tail(bridge, "*")
    assert tail.stdout is not None and tail.stderr is not None
    try:
        wait_for_tail_subscription(bridge)
        with Bus(dir=str(bridge.directory), worker="piped") as bus:
            bus.publish("first", 1)
            assert bus.flush()
            assert "first" in tail.stdout.readline()
            tail.stdout.close()  # what `head -n 1` does after its line
            for n in range(5):
                bus.publish("later", n)
            assert bus.flush()
            wait_until(lambda: tail.poll() is not None, 15, "tail to exit")
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(10)
    err = tail.stderr.read()
    tail.stderr.close()
    assert tail.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception" not in err
