"""`make demo`'s program: events cross two circusd hosts; Ctrl-C leaves no process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import wait_until

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def processes_with_env(marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bytes(answer.read())
    except OSError:
        return b""


def test_demo_shows_cross_host_events_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    output = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    with open(output, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    try:

        def ticks_from_both() -> bool:
            text = output.read_text()
            return all(f"{h} {h}/ticker/" in text for h in ("host-a", "host-b"))

        wait_until(ticks_from_both, 30, "ticks from both hosts in the tail on host-b")
        wait_until(lambda: "demo.roundtrip" in output.read_text(), 30, "a cross-host round trip")
        page = re.search(r"live page at (http://\S+)", output.read_text())
        assert page is not None
        wait_until(lambda: b"circus-events live" in fetch(page.group(1)), 20, "the live page")
        workdir = re.search(r"two hosts in (\S+)", output.read_text())
        assert workdir is not None
        marker = f"DEMO_HOME={workdir.group(1)}".encode()
        assert processes_with_env(marker), "the demo's circusd and workers run"
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        assert demo.wait(60) == 0
        wait_until(lambda: not processes_with_env(marker), 15, "every demo process to exit")
        text = output.read_text()
        assert "demo: stopped" in text and "Traceback" not in text
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        # The demo runs each circusd in its own session: when it did not stop
        # them (a failed run), nothing else would.
        started = re.search(r"two hosts in (\S+)", output.read_text())
        if started is not None:
            for pid in processes_with_env(f"DEMO_HOME={started.group(1)}".encode()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
