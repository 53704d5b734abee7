"""supervisord runs the bridge, two workers and the listener."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import WORKERS, query_bridge, wait_until

from circus_events import Bus
from circus_events.supervisor import parse_header, run_listener, state_channel

SUPERVISORD_CONF = """
[supervisord]
nodaemon = true
logfile = {home}/supervisord.log
pidfile = {home}/supervisord.pid
childlogdir = {home}

[unix_http_server]
file = {home}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{home}/supervisor.sock

[program:bridge]
command = {python} -m circus_events bridge
priority = 1
startsecs = 1
stopsignal = TERM
environment = CIRCUS_EVENTS_DIR="{sockets}",CIRCUS_EVENTS_HOST="sv-host"

[eventlistener:events]
command = {python} -m circus_events supervisor-listener
events = PROCESS_STATE
priority = 2
environment = CIRCUS_EVENTS_DIR="{sockets}",CIRCUS_EVENTS_HOST="sv-host"

[program:recorder]
command = {python} {workers}/recorder.py {home}/events.jsonl *
numprocs = 2
process_name = %(program_name)s_%(process_num)d
priority = 10
stopsignal = TERM
environment = CIRCUS_EVENTS_DIR="{sockets}",CIRCUS_EVENTS_HOST="sv-host"
"""


def read_events(path: Path) -> list[dict[str, Any]]:
    import json  # noqa: PLC0415

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_supervisord_bridge_workers_and_listener(short_tmp: Path) -> None:
    home = short_tmp / "sv"
    home.mkdir()
    sockets = home / "s"
    conf = home / "supervisord.conf"
    conf.write_text(
        SUPERVISORD_CONF.format(home=home, sockets=sockets, python=sys.executable, workers=WORKERS)
    )
    bin_dir = Path(sys.executable).parent
    supervisord = subprocess.Popen(
        [str(bin_dir / "supervisord"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    events_file = home / "events.jsonl"
    try:
        wait_until(
            lambda: len({e["ready"] for e in read_events(events_file) if "ready" in e}) == 2,
            60,
            "both recorders ready",
        )
        with Bus(dir=str(sockets), worker="outsider") as bus:
            bus.publish("orders.paid", {"id": 7})
            assert bus.flush()
        wait_until(
            lambda: sum(e.get("channel") == "orders.paid" for e in read_events(events_file)) == 2,
            20,
            "both workers to receive",
        )
        # A state change: restart one recorder; the others see it on the bus.
        ctl = [str(bin_dir / "supervisorctl"), "-c", str(conf)]
        subprocess.run([*ctl, "restart", "recorder:recorder_0"], check=True, capture_output=True)

        def state_events() -> set[str]:
            return {e["channel"] for e in read_events(events_file) if "channel" in e}

        wait_until(
            lambda: (
                {"supervisor.recorder.stopping", "supervisor.recorder.stopped"} <= state_events()
            ),
            30,
            "PROCESS_STATE events on the bus",
        )
        status = query_bridge(sockets)
        assert status is not None and status["host"] == "sv-host"
    finally:
        supervisord.terminate()
        supervisord.wait(60)


def test_listener_protocol_answers_ok_and_publishes() -> None:
    published: list[tuple[str, Any]] = []

    class Recorder:
        def publish(self, channel: str, data: Any) -> None:
            published.append((channel, data))

    payload = "processname:web_1 groupname:web from_state:RUNNING expected:0 pid:4242"
    other = "processname:x groupname:x"
    stdin = io.StringIO(
        f"ver:3.0 server:supervisor serial:1 pool:l poolserial:1 eventname:PROCESS_STATE_EXITED "
        f"len:{len(payload)}\n{payload}"
        f"ver:3.0 server:supervisor serial:2 pool:l poolserial:2 eventname:TICK_5 "
        f"len:{len(other)}\n{other}"
    )
    stdout = io.StringIO()
    run_listener(stdin, stdout, Recorder())
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    assert published == [
        (
            "supervisor.web.exited",
            {
                "program": "web",
                "process": "web_1",
                "from_state": "RUNNING",
                "state": "EXITED",
                "pid": 4242,
                "expected": False,
            },
        )
    ]
    assert state_channel("TICK_5", {"groupname": "x"}) is None
    assert parse_header("eventname:PROCESS_STATE_RUNNING len:3")["len"] == "3"


def test_listener_refuses_odd_headers_and_keeps_in_step() -> None:
    class Refuser:
        def publish(self, channel: str, data: Any) -> None:
            raise AssertionError("nothing to publish")

    for bad in ("eventname:X len:\u00b2", "eventname:X len:-1", "len:3", "x" * 10_000):
        stdout = io.StringIO()
        run_listener(io.StringIO(bad + "\n"), stdout, Refuser())
        assert stdout.getvalue() == "READY\nREADY\n", bad[:20]  # one READY per line, no crash
        with pytest.raises(ValueError, match="not an eventlistener header"):
            parse_header(bad)
