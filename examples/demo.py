"""``make demo``: two simulated hosts, each a circusd with the events plugin.

One Redis relays between them: ``$CIRCUS_EVENTS_REDIS_URL`` if set, else a
private redis-server on a free port. Each host runs ``examples/circus.ini``
(a ticker and two listeners); a ``circus-events tail`` on host B shows the
events of both hosts, including circus' own process events, and ``circus-events
web`` on host B serves the live page (its URL is printed). Ctrl-C (or
``--duration``) stops everything and leaves no process behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
HOSTS = ("host-a", "host-b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Group:
    """Child processes (each in its own session) stopped in reverse order of start."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], env: dict[str, str], **kwargs: object
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, env=env, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.processes.append(process)
        return process  # type: ignore[no-any-return]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left behind


def port_or_free(port: int) -> int:
    """``port`` if nothing listens there on 127.0.0.1, else a free one."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)  # poll until ready
    raise SystemExit(f"demo: {what} did not come up within {timeout:.0f}s")


def start_redis(group: Group, workdir: Path) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "demo: redis-server is missing (make demo installs it; or set CIRCUS_EVENTS_REDIS_URL)"
        )
    port = free_port()
    group.start(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        dict(os.environ),
    )  # fmt: skip

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(answers, "redis-server")
    return f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0: Ctrl-C)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ce-demo-", dir="/tmp"))
    group = Group()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        redis_url = os.environ.get("CIRCUS_EVENTS_REDIS_URL") or start_redis(group, workdir)
        print(f"demo: Redis at {redis_url.split('@')[-1]}; two hosts in {workdir}", flush=True)
        homes = {}
        for host in HOSTS:
            home = workdir / host
            home.mkdir()
            homes[host] = home
            env = {
                **os.environ,
                "CIRCUS_EVENTS_REDIS_URL": redis_url,
                "DEMO_HOST": host,
                "DEMO_HOME": str(home),
                "DEMO_PYTHON": PYTHON,
                "DEMO_EXAMPLES": str(HERE),
                "DEMO_ENDPOINT_PORT": str(free_port()),
                "DEMO_PUBSUB_PORT": str(free_port()),
                "DEMO_STATS_PORT": str(free_port()),
            }
            log = open(home / "circusd.log", "wb")  # noqa: SIM115 - closed with the process
            group.start(
                [str(BIN / "circusd"), str(HERE / "circus.ini")], env, stdout=log, stderr=log
            )
        tail_env = {
            **os.environ,
            "CIRCUS_EVENTS_DIR": str(homes["host-b"] / "sockets"),
            "CIRCUS_EVENTS_HOST": "host-b",
        }

        def bridge_up() -> bool:
            status = [PYTHON, "-m", "circus_events", "status"]
            return (
                subprocess.run(status, env=tail_env, capture_output=True, check=False).returncode
                == 0
            )

        wait_for(bridge_up, "host-b's bridge")
        print(
            "demo: tail on host-b of every event from both hosts; Ctrl-C stops everything",
            flush=True,
        )
        group.start([PYTHON, "-m", "circus_events", "tail", "*"], tail_env)
        # The live page (circus-events web) on host-b: 8080 when it is free.
        web_port = port_or_free(8080)
        group.start(
            [PYTHON, "-m", "circus_events", "web", "--port", str(web_port)],
            {**tail_env, "CIRCUS_EVENTS_REDIS_URL": redis_url},
            stdout=subprocess.DEVNULL,
        )
        print(f"demo: live page at http://127.0.0.1:{web_port}/", flush=True)
        started = time.monotonic()
        while not stopping:
            if args.duration and time.monotonic() - started > args.duration:
                break
            if any(p.poll() is not None for p in group.processes):
                print("demo: a process exited early; stopping (see the logs in the demo directory)")
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
