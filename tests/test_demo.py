"""`make demo`'s program: events flow, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import wait_until

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def processes_in_session(session: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue
    return found


def test_demo_shows_events_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: output.read_text().count("demo.tick") >= 4, 60, "ticks in the tail")
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        assert demo.wait(30) == 0
        wait_until(lambda: not processes_in_session(demo.pid), 10, "every demo process to exit")
        text = output.read_text()
        assert "ticker-0" in text and "ticker-1" in text
        assert "demo: stopped" in text and "Traceback" not in text
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
