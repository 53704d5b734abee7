"""Fixtures that start real servers: redis-server on free ports, short socket dirs.

redis-server and free ports come from :mod:`circus_events.bench.servers` (the
benchmarks start the same server); bridges are asked through
:mod:`circus_events.control`, the client ``circus-events status`` uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from circus_events._exceptions import NoBridgeAnswers
from circus_events.bench import servers
from circus_events.bench.servers import RedisServer, free_port
from circus_events.control import query

__all__ = ["RedisServer", "free_port", "query_bridge", "wait_until"]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # poll interval, not synchronisation: the loop re-checks
        delay = min(delay * 2, 0.05)


def redis_server_binary() -> str:
    binary = servers.redis_server_binary()
    if binary is None:
        pytest.fail(
            "redis-server is not installed: `make test` installs it "
            "(apt-get install -y redis-server)",
            pytrace=False,
        )
    return binary


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for ipc sockets (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ce-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_factory(short_tmp: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start as many private redis-servers as a test needs; all are stopped after it."""
    started: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        redis_server_binary()
        directory = short_tmp / f"redis{len(started)}"
        directory.mkdir()
        server = RedisServer(directory, **kwargs)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture(autouse=True)
def _no_inherited_bus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure buses explicitly; a developer's CIRCUS_EVENTS_* must not leak in."""
    for name in list(os.environ):
        if name.startswith("CIRCUS_EVENTS_"):
            monkeypatch.delenv(name)


WORKERS = Path(__file__).parent / "workers"


def query_bridge(directory: Path | str, namespace: str = "default", timeout: float = 1.0) -> Any:
    """A bridge's status over its control socket; None if it does not answer (yet)."""
    try:
        return query(str(directory), namespace, "status", timeout)
    except NoBridgeAnswers:
        return None


class BridgeProcess:
    """``circus-events bridge`` in its own process, standing for one host."""

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "host-a",
        namespace: str = "default",
        redis_url: str | None = None,
        args: tuple[str, ...] = (),
        log: Path | None = None,
    ) -> None:
        self.directory = directory
        self.host = host
        self.namespace = namespace
        self.redis_url = redis_url
        self.args = args
        self.log = log or directory.parent / f"bridge-{host}-{namespace}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "circus_events", "-v", "bridge", "--dir", str(self.directory)]
        cmd += ["--host", self.host, "--namespace", self.namespace, *self.args]
        return cmd

    def environment(self) -> dict[str, str]:
        """The URL goes in the environment: the bridge refuses a password on its command line."""
        env = dict(os.environ)
        if self.redis_url:
            env["CIRCUS_EVENTS_REDIS_URL"] = self.redis_url
        return env

    def start(self, wait: bool = True) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment()
            )
        if wait:
            wait_until(lambda: self.status(0.2) is not None, 15, f"bridge {self.host} to answer")

    def status(self, timeout: float = 2.0) -> Any:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"bridge {self.host} exited: {self.log.read_text()[-2000:]}")
        return query_bridge(self.directory, self.namespace, timeout)

    def counters(self) -> dict[str, int]:
        status = self.status()
        assert status is not None, "bridge does not answer"
        counters: dict[str, int] = status["counters"]
        return counters

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(15)
        self.process = None
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@pytest.fixture
def bridge_factory(short_tmp: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """Start bridges (one per simulated host); all are stopped after the test."""
    bridges: list[BridgeProcess] = []

    def make(host: str = "host-a", *, start: bool = True, **kwargs: Any) -> BridgeProcess:
        directory = short_tmp / host
        directory.mkdir(exist_ok=True)
        bridge = BridgeProcess(directory, host=host, **kwargs)
        if start:
            bridge.start()
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        bridge.stop()


@pytest.fixture
def bridge(bridge_factory: Callable[..., BridgeProcess]) -> BridgeProcess:
    """One single-host bridge."""
    return bridge_factory()


class WorkerProcess:
    """A test worker script in its own process, read line by line."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKERS / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )

    def expect_line(self, expected: str, timeout: float = 20.0) -> None:
        import selectors  # noqa: PLC0415

        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if selector.select(deadline - time.monotonic()):
                    line = self.process.stdout.readline().decode().strip()
                    if line == expected:
                        return
                    if not line and self.process.poll() is not None:
                        break
        finally:
            selector.close()
        raise AssertionError(f"worker never printed {expected!r}: {self.stderr_tail()}")

    def result(self, timeout: float = 60.0) -> Any:
        import json  # noqa: PLC0415

        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err.decode()[-3000:]
        return json.loads(out.decode().strip().splitlines()[-1])

    def stderr_tail(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read().decode()[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def workers() -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(script: str, *args: str, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(script, *args, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


class AsyncioThread:
    """An event loop on a thread, so a sync test can drive an AsyncBus next to Bus objects."""

    def __init__(self) -> None:
        import asyncio  # noqa: PLC0415
        import threading  # noqa: PLC0415

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AsyncioThread:
        self.thread.start()
        return self

    def run(self, coroutine: Any, timeout: float = 30.0) -> Any:
        import asyncio  # noqa: PLC0415

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


#: The [circus] section of every test circusd (ports filled in by str.format).
CIRCUS_SECTION = """
[circus]
endpoint = tcp://127.0.0.1:{endpoint}
pubsub_endpoint = tcp://127.0.0.1:{pubsub}
stats_endpoint = tcp://127.0.0.1:{stats}
statsd = False
check_delay = 1
warmup_delay = 0
"""

CIRCUS_INI = (
    CIRCUS_SECTION
    + """
[env]
CIRCUS_EVENTS_DIR = {sockets}
CIRCUS_EVENTS_HOST = {host}

[plugin:events]
use = circus_events.plugin.EventsPlugin
dir = $(circus.env.CIRCUS_EVENTS_DIR)
host = $(circus.env.CIRCUS_EVENTS_HOST)
reconcile_interval = 2
{plugin_extra}

[watcher:recorder]
cmd = {python} {workers}/recorder.py {home}/events.jsonl *
numprocesses = {recorders}
copy_env = True
graceful_timeout = 5
"""
)


class CircusHost:
    """A real circusd with the events plugin, standing for one host."""

    def __init__(
        self, home: Path, host: str, redis_url: str | None, plugin_extra: str = ""
    ) -> None:
        self.home = home
        self.host = host
        self.redis_url = redis_url
        self.sockets = home / "s"
        self.endpoint = free_port()
        self.ini = home / "circus.ini"
        self.ini.write_text(
            CIRCUS_INI.format(
                endpoint=self.endpoint,
                pubsub=free_port(),
                stats=free_port(),
                sockets=self.sockets,
                host=host,
                python=sys.executable,
                workers=WORKERS,
                home=home,
                recorders=2,
                plugin_extra=plugin_extra,
            )
        )
        self.events_file = home / "events.jsonl"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ}
        if self.redis_url:
            env["CIRCUS_EVENTS_REDIS_URL"] = self.redis_url
        circusd = Path(sys.executable).parent / "circusd"
        with open(self.home / "circusd.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(circusd), "--log-output", str(self.home / "circusd.log"), str(self.ini)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def ctl(self, *args: str) -> str:
        circusctl = Path(sys.executable).parent / "circusctl"
        result = subprocess.run(
            [
                str(circusctl),
                "--endpoint",
                f"tcp://127.0.0.1:{self.endpoint}",
                "--timeout",
                "10",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout + result.stderr

    def bridge_status(self) -> Any:
        return query_bridge(self.sockets, "default", 0.5)

    def events(self) -> list[dict[str, Any]]:
        import json  # noqa: PLC0415

        if not self.events_file.exists():
            return []
        lines = self.events_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def ready_workers(self) -> set[str]:
        return {e["ready"] for e in self.events() if "ready" in e}

    def stop(self) -> None:
        if self.process is None:
            return
        # circusd starts its watchers, plugins and stats in sessions of their
        # own: its process group does not hold them, so note them first.
        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            family = []
        # circusd drops a SIGTERM that arrives while it runs a command (a
        # ConflictError in its log: "arbiter is already running watcher_stop
        # command"), e.g. a `circusctl stop` a test just sent: ask again.
        deadline = time.monotonic() + 30
        while self.process.poll() is None and time.monotonic() < deadline:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything circusd left behind
        for process in family:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.process.wait(10)
        self.process = None


@pytest.fixture
def circus_factory(short_tmp: Path) -> Iterator[Callable[..., CircusHost]]:
    hosts: list[CircusHost] = []

    def make(
        host: str, redis_url: str | None = None, *, start: bool = True, **kwargs: Any
    ) -> CircusHost:
        home = short_tmp / host
        home.mkdir()
        circus_host = CircusHost(home, host, redis_url, **kwargs)
        if start:
            circus_host.start()
        hosts.append(circus_host)
        return circus_host

    yield make
    for circus_host in hosts:
        circus_host.stop()
