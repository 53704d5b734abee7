"""The processes one ``circus-events bench`` run measures through: redis-server,
the raw pyzmq proxy and the bridges (simulated hosts), started and stopped together."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

from . import infra
from .cases import BRIDGES, NAMESPACE, System
from .infra import wait_for_bridge
from .servers import RedisServer
from .workers import SETUP_TIMEOUT, BusTarget


class Stack:
    """redis-server, the proxy and the bridges of one run."""

    def __init__(self, workdir: str, context: Any, bridges: tuple[str, ...]) -> None:
        self.workdir = workdir
        self.context = context
        self.redis = RedisServer(self._dir("redis"))
        self.bridge_names = bridges
        self.bridges: dict[str, Any] = {}
        self.dirs: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}
        self.proxy: Any = None
        self.proxy_endpoints = (f"ipc://{workdir}/proxy-in.sock", f"ipc://{workdir}/proxy-out.sock")
        self.peer_python = ""

    def _dir(self, name: str) -> str:
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    def start(self, proxy: bool) -> None:
        self.redis.start()
        logs: dict[str, str] = {}
        for name in self.bridge_names:
            host, namespace, mode = BRIDGES[name]
            url = self.redis.url if mode else None
            process, bus_dir, log = infra.start_bridge(
                self.workdir, name, host, namespace, url, mode
            )
            self.bridges[name], self.dirs[name], logs[name] = process, bus_dir, log
        for name in self.bridge_names:
            host, namespace, mode = BRIDGES[name]
            try:
                wait_for_bridge(
                    self.bridges[name],
                    self.dirs[name],
                    logs[name],
                    namespace,
                    ready=infra.redis_connected if mode else None,
                )
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()
                self.unavailable[name] = f"bridge {host} ({mode}): {' / '.join(reason[-3:])}"
        if proxy:
            parent, child = self.context.Pipe()
            self.proxy = self.context.Process(
                target=infra.zmq_proxy_main, args=(self.proxy_endpoints, child), daemon=True
            )
            self.proxy.start()
            child.close()
            if not parent.poll(SETUP_TIMEOUT):
                raise RuntimeError("the zmq proxy did not start")
            parent.recv()

    def stop(self) -> None:
        for process in self.bridges.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.bridges.values():
            infra.stop_process(process)
        if self.proxy is not None:
            self.proxy.terminate()
            self.proxy.join(5)
        self.redis.stop()

    def target(self, bridge: str) -> BusTarget:
        if not bridge:
            return BusTarget("", NAMESPACE, "")
        host, namespace, _ = BRIDGES[bridge]
        return BusTarget(self.dirs[bridge], namespace, host)

    def hub_pids(self, system: System) -> dict[str, int]:
        """The processes a system runs through besides its workers (for CPU)."""
        if system.name == "zmq-proxy":
            return {"proxy": int(self.proxy.pid)}
        pids = {f"bridge-{b}": self.bridges[b].pid for b in dict.fromkeys(system.bridges) if b}
        if system.bridges[0] != "local":
            pids["redis"] = self.redis.pid
        return pids


@contextlib.contextmanager
def running_stack(
    workdir: str, context: Any, bridges: tuple[str, ...], proxy: bool
) -> Iterator[Stack]:
    stack = Stack(workdir, context, bridges)
    try:
        stack.start(proxy)
        yield stack
    finally:
        stack.stop()
