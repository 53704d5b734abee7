"""A private redis-server on a free port: the one the benchmarks and the tests start.

The tests' fixtures (``tests/conftest.py``) and the benchmark harness both use
:class:`RedisServer` and :func:`free_port` from here, so that "a Redis of our
own, never the one on 6379" is written once. Nothing here imports pytest or
the rest of the harness.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, Final

#: Redis' default port: never used, whatever the system hands out.
REDIS_DEFAULT_PORT: Final = 6379
#: Seconds a starting redis-server has to answer PING (it takes ~10 ms idle).
START_TIMEOUT: Final = 15.0
#: Seconds a stopping redis-server has after SIGTERM before SIGKILL.
STOP_TIMEOUT: Final = 10.0
#: What redis-server logs when it closes a client for its output buffer.
BUFFER_KILL_LOG: Final = "overcoming of output buffer limits"


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now, never Redis' default 6379."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != REDIS_DEFAULT_PORT:
            return port


def redis_server_version() -> str:
    """The installed redis-server's version, "unknown" if it does not say."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
    return "unknown"


def redis_server_binary() -> str | None:
    """The redis-server on PATH, None if there is none."""
    return shutil.which("redis-server")


class RedisServer:
    """A private redis-server on a free port, logging to ``directory/redis.log``.

    ``kill`` (SIGKILL, like a crashed machine), ``restart`` (on the same
    port, empty unless ``aof``), ``pause``/``resume`` (SIGSTOP/SIGCONT) are
    the faults the tests and the benchmarks inject.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        password: str | None = None,
        aof: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.log_path = os.path.join(directory, "redis.log")
        self.port = free_port()
        self.password = password
        self.aof = aof
        #: ACL users (name -> password) with every right, created at each start:
        #: ``ACL SETUSER <name> off`` then cuts one client off (see ``user_url``).
        self.users = dict(users or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def user_url(self, user: str) -> str:
        """The URL of one of ``users``."""
        return f"redis://{user}:{self.users[user]}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def start(self) -> None:
        """Start and return once it answers PING; RuntimeError if it cannot."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "always",
            "--logfile", self.log_path,
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        for user, password in self.users.items():
            args += ["--user", user, "on", f">{password}", "~*", "&*", "+@all"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING in time")
            time.sleep(0.01)  # poll interval: the loop re-checks

    def ping(self) -> bool:
        """True if the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(100)
                s.sendall(b"PING\r\n")
                return s.recv(100).startswith(b"+PONG")
        except OSError:
            return False

    def client(self) -> Any:
        """A redis-py client of this server (the caller closes it)."""
        import redis  # noqa: PLC0415

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, like a crashed machine."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused); SIGKILL if it lingers."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self.process = None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as log:
            return log.read()[-2000:]
        return ""

    def buffer_kills(self) -> int:
        """How many clients Redis closed for their output buffer so far."""
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as log:
            return log.read().count(BUFFER_KILL_LOG)
        return 0
