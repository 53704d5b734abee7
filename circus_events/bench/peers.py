"""The peer libraries' own environment, and their worker processes.

Peers run with their own interpreter, in a venv created on demand (reused
when present) with versions they work with: broadcaster 0.3.1 delivers
nothing with redis-py 8 or later (it marks itself ready before its SUBSCRIBE
completes, so its listener exits), so redis-py is pinned to 7.4 there.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from array import array
from collections.abc import Callable
from typing import Any, Final

from .workers import PublisherResult, SubscriberResult

#: What the peers' venv gets (a stamp file records it; a change re-installs).
PEER_REQUIREMENTS: Final = (
    "broadcaster[redis]==0.3.1",
    "redis[hiredis]==7.4.*",
    "channels==4.3.*",
    "channels_redis==4.3.*",
    # The websocket fan-out bench (benchmarks/websocket_fanout.py): the peers'
    # servers, each in its documented set-up, under the same uvicorn.
    "python-socketio==5.*",
    "django>=4.2,<6",
    "starlette>=0.37,<2",
    "uvicorn>=0.30,<1",
    "websockets>=13,<18",
)
PEER_DISTRIBUTIONS: Final = (
    "broadcaster",
    "redis",
    "hiredis",
    "channels",
    "channels_redis",
    "python-socketio",
    "django",
    "starlette",
    "uvicorn",
    "websockets",
)
ENV_VARIABLE: Final = "CIRCUS_EVENTS_BENCH_PEERS"
DEFAULT_DIR: Final = ".venv-bench-peers"
STAMP_FILE: Final = ".bench-peers-stamp"
PIP_TIMEOUT: Final = 600.0
WORKER_SCRIPT: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_worker.py")


class PeersUnavailable(Exception):
    """The peers' environment could not be made (no network, pip failed)."""


def peers_dir() -> str:
    return os.path.abspath(os.environ.get(ENV_VARIABLE) or DEFAULT_DIR)


def ensure_env(say: Callable[[str], None]) -> tuple[str, dict[str, str]]:
    """The peers' python and the versions installed there; creates the venv if needed."""
    directory = peers_dir()
    python = os.path.join(directory, "bin", "python")
    stamp = os.path.join(directory, STAMP_FILE)
    wanted = "\n".join(PEER_REQUIREMENTS)
    current = ""
    with contextlib.suppress(OSError), open(stamp) as f:
        current = f.read()
    if current != wanted or not os.path.exists(python):
        say(f"creating the peers' environment in {directory} ({', '.join(PEER_REQUIREMENTS)})")
        for command in (
            [sys.executable, "-m", "venv", directory],
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *PEER_REQUIREMENTS],
        ):  # fmt: skip
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise PeersUnavailable(f"{command[2]} failed: {exc}") from exc
            if done.returncode:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise PeersUnavailable(f"{' '.join(command[1:4])} failed: {' / '.join(tail)}")
        with open(stamp, "w") as f:
            f.write(wanted)
    probe = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{d: m.version(d) for d in {list(PEER_DISTRIBUTIONS)!r}}}))"
    )
    try:
        out = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeersUnavailable(f"the peers' python does not answer: {exc}") from exc
    versions: dict[str, str] = json.loads(out)
    return python, versions


class PeerProcess:
    """A peer worker (``peer_worker.py``) with the pipe interface of a
    ``multiprocessing`` Connection: ``poll``, ``recv``, ``send``."""

    def __init__(self, python: str, spec: dict[str, Any], role: str) -> None:
        self.role = role
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pending: str | None = None
        self.process = subprocess.Popen(
            [python, WORKER_SCRIPT, json.dumps({**spec, "role": role})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def poll(self, timeout: float = 0) -> bool:
        if self._pending is not None:
            return True
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return False
        if line is None:
            raise EOFError
        self._pending = line
        return True

    def recv(self) -> Any:
        if not self.poll(3600):
            raise EOFError
        line, self._pending = self._pending, None
        assert line is not None
        if not line.startswith("{"):
            return line
        result = json.loads(line)
        if self.role == "pub":
            return PublisherResult(
                result["first_ns"],
                result["last_send_ns"],
                result["published"],
                result["max_lag_ns"],
                True,
                result["cpu_ns"],
            )
        return SubscriberResult(
            result["received"],
            result["first_ns"],
            result["last_ns"],
            array("q", result["samples"]).tobytes(),
            0,
            result["cpu_ns"],
        )

    def send(self, message: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.write(message + "\n")
            self.process.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
