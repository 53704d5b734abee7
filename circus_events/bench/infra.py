"""The processes a benchmark runs against besides redis-server (:mod:`.servers`):
bridges, the zmq proxy, and what samples them.

* :func:`start_bridge` / :func:`wait_for_bridge` / :func:`stop_process`:
  ``python -m circus_events bridge`` as a simulated host, with its own
  socket directory, asked through :func:`circus_events.control.query`.
* :class:`Sampler`: a thread that samples ``CLIENT LIST`` (connections per
  client group) and the resident memory of the bridges every 100 ms.
* :func:`zmq_proxy_main`: the raw pyzmq ``XSUB``/``XPUB`` proxy baseline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final

import zmq

from .._config import DEFAULT_SUBSCRIBER_HWM
from .._exceptions import NoBridgeAnswers
from ..bridge.local import PULL_HWM
from ..control import Command, query
from .servers import RedisServer
from .workers import SETUP_TIMEOUT

# RedisServer is imported by name from here by the side benchmarks (benchmarks/_side_bench.py).
__all__ = [
    "RedisServer",
    "Sampler",
    "bridge_counters",
    "redis_connected",
    "start_bridge",
    "stop_process",
    "wait_for_bridge",
    "zmq_proxy_main",
]

#: Seconds between samples of CLIENT LIST and of the bridges' memory.
SAMPLE_INTERVAL: Final = 0.1
#: Client names the baselines give their connections (CLIENT SETNAME).
BASELINE_CLIENT_PREFIX: Final = "bench-"

# The buffering circus-events uses on the same local path, for the proxy baseline.
PROXY_IN_HWM: Final = PULL_HWM  # the same buffering as the bridge
PROXY_OUT_HWM: Final = DEFAULT_SUBSCRIBER_HWM


# -- bridges --------------------------------------------------------------------------


def bridge_env() -> dict[str, str]:
    """This environment without ``CIRCUS_EVENTS_*``: the flags say everything."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}


#: ``python -c`` program of a bridge as it was before publisher confirms: its
#: desk is made as without Redis (hellos say "no confirms", so its workers keep
#: nothing; no gate, no confirms, no catch-up hold). The bench's baseline only.
_NO_CONFIRMS: Final = """
import sys
from circus_events.bridge import confirms
_open = confirms.ConfirmDesk.open.__func__
confirms.ConfirmDesk.open = classmethod(lambda cls, redis, *rest: _open(cls, None, *rest))
sys.argv[0] = "circus-events"
from circus_events.cli import main
main()
"""


def start_bridge(
    workdir: str,
    name: str,
    host: str,
    namespace: str,
    redis_url: str | None = None,
    mode: str | None = None,
) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start one bridge (a simulated host); returns the process, its dir and its log path."""
    bus_dir = os.path.join(workdir, name)
    os.makedirs(bus_dir, exist_ok=True)
    log_path = os.path.join(workdir, f"{name}.log")
    command = [sys.executable, "-m", "circus_events", "bridge", "--dir", bus_dir]
    if mode == "stream-no-confirms":
        command[1:3] = ["-c", _NO_CONFIRMS]
        mode = "stream"
    command += ["--host", host, "--namespace", namespace]
    env = bridge_env()
    if redis_url is not None and "@" in redis_url:
        env["CIRCUS_EVENTS_REDIS_URL"] = redis_url  # credentials stay out of `ps`
    elif redis_url is not None:
        command += ["--redis-url", redis_url]
    if mode is not None:
        command += ["--mode", mode]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, bus_dir, log_path


def redis_connected(status: Any) -> bool:
    return bool((status.get("redis") or {}).get("connected"))


def ask_bridge(
    bus_dir: str, namespace: str, command: Command = "ping", timeout: float = 0.2
) -> dict[str, Any] | None:
    """One control request to a bridge; None if it does not answer (yet)."""
    try:
        return query(bus_dir, namespace, command, timeout)
    except NoBridgeAnswers:
        return None


def wait_for_bridge(
    bridge: subprocess.Popen[bytes],
    bus_dir: str,
    log_path: str,
    namespace: str,
    ready: Callable[[Any], bool] | None = None,
) -> None:
    """Poll the bridge's control socket until it answers (and ``ready(status)`` holds)."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while time.monotonic() < deadline:
        if bridge.poll() is not None:
            with open(log_path, errors="replace") as log:
                raise RuntimeError(f"the bridge exited:\n{log.read()[-2000:]}")
        if ready is None:
            if ask_bridge(bus_dir, namespace) is not None:
                return
        else:
            status = ask_bridge(bus_dir, namespace, "status")
            if status is not None and ready(status):
                return
            time.sleep(0.02)  # poll interval: the loop re-checks the bridge's state
    raise RuntimeError("the bridge did not answer in time")


def bridge_counters(bus_dir: str, namespace: str) -> dict[str, int]:
    """The numeric counters of a bridge and of its Redis side, flat."""
    status = ask_bridge(bus_dir, namespace, "status", timeout=2.0)
    if status is None:
        return {}
    flat = {k: v for k, v in status.get("counters", {}).items() if isinstance(v, int)}
    for key, value in (status.get("redis") or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            flat[f"redis.{key}"] = value
    return flat


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of a process (``VmRSS``, or ``VmHWM``: its peak), from /proc."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


# -- sampling -------------------------------------------------------------------------


def client_group(name: str) -> str:
    """``bridge <host>`` for a bridge's connections, ``baseline`` or ``other`` (peers)."""
    if name.startswith("circus-events:"):
        return "bridge " + name.split(":")[1]
    if name.startswith(BASELINE_CLIENT_PREFIX):
        return "baseline"
    return "other"


class Sampler:
    """On a thread: the largest count of Redis connections per group, and the
    largest resident memory of each watched process, over one run."""

    def __init__(self, port: int | None, pids: dict[str, int]) -> None:
        self._client: Any = None
        self._own_id = -1
        if port is not None:
            import redis  # noqa: PLC0415

            self._client = redis.Redis(host="127.0.0.1", port=port, client_name="bench-monitor")
            self._own_id = int(self._client.client_id())
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.max_by_group: dict[str, int] = {}
        self.max_rss: dict[str, int] = {}

    def connections(self) -> dict[str, int]:
        """Connections per group now (the sampler's own left out)."""
        groups: dict[str, int] = {}
        if self._client is None:
            return groups
        for client in self._client.client_list():
            if int(client["id"]) == self._own_id:
                continue
            group = client_group(str(client.get("name", "")))
            groups[group] = groups.get(group, 0) + 1
        return groups

    def _sample(self) -> None:
        with contextlib.suppress(Exception):  # Redis may be down (outage runs)
            for group, count in self.connections().items():
                self.max_by_group[group] = max(self.max_by_group.get(group, 0), count)
        for role, pid in self._pids.items():
            self.max_rss[role] = max(self.max_rss.get(role, 0), rss_bytes(pid))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()  # at least one sample after everything ran
        if self._client is not None:
            self._client.close()


# -- the raw pyzmq proxy ----------------------------------------------------------------


def zmq_proxy_main(endpoints: tuple[str, str], conn: Connection) -> None:
    """``zmq.proxy(XSUB, XPUB)`` with the bridge's high-water marks; runs until killed."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front = context.socket(zmq.XSUB)
    front.setsockopt(zmq.RCVHWM, PROXY_IN_HWM)
    front.bind(endpoints[0])
    back = context.socket(zmq.XPUB)
    back.setsockopt(zmq.SNDHWM, PROXY_OUT_HWM)
    back.setsockopt(zmq.XPUB_NODROP, 1)  # a full subscriber slows the proxy down
    back.bind(endpoints[1])
    conn.send("ready")
    with contextlib.suppress(zmq.ContextTerminated, KeyboardInterrupt):
        zmq.proxy(front, back)
