"""``make demo``: a bridge, workers publishing and subscribing, and a tail.

Starts everything in a private directory, shows ``circus-events tail`` of
all events, and stops everything on Ctrl-C (or after ``--duration``
seconds), leaving no process behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


class Group:
    """Child processes stopped together, in reverse order of start."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], env: dict[str, str], **kwargs: object
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, env=env, **kwargs)  # type: ignore[call-overload]
        self.processes.append(process)
        return process  # type: ignore[no-any-return]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_for_bridge(env: dict[str, str], deadline: float) -> None:
    while time.monotonic() < deadline:
        status = subprocess.run(
            [PYTHON, "-m", "circus_events", "status"], env=env, capture_output=True, check=False
        )
        if status.returncode == 0:
            return
        time.sleep(0.1)  # poll until the bridge answers
    raise SystemExit("the bridge did not start; see its log above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0: Ctrl-C)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ce-demo-", dir="/tmp"))
    env = {
        **os.environ,
        "CIRCUS_EVENTS_DIR": str(workdir),
        "CIRCUS_EVENTS_HOST": "demo-host",
        "PYTHONUNBUFFERED": "1",
        "DEMO_TICK_INTERVAL": "1.0",
    }
    group = Group()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"demo: sockets in {workdir}; Ctrl-C stops everything", flush=True)
        group.start([PYTHON, "-m", "circus_events", "bridge"], env)
        wait_for_bridge(env, time.monotonic() + 15)
        group.start([PYTHON, "-m", "circus_events", "tail", "*"], env)
        for n in range(2):
            group.start(
                [PYTHON, str(HERE / "ticker.py")], {**env, "CIRCUS_EVENTS_WORKER": f"ticker-{n}"}
            )
        group.start(
            [PYTHON, str(HERE / "listener.py")], {**env, "CIRCUS_EVENTS_WORKER": "listener"}
        )
        started = time.monotonic()
        while not stopping:
            if args.duration and time.monotonic() - started > args.duration:
                break
            if any(p.poll() is not None for p in group.processes):
                print("demo: a process exited early; stopping", flush=True)
                break
            time.sleep(0.2)  # poll for Ctrl-C and the deadline
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        group.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
        print("demo: stopped", flush=True)


if __name__ == "__main__":
    main()
