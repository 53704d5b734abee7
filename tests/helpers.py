"""Helpers shared by the Redis-side, stream-side and cross-host tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Self

import pytest
from conftest import BridgeProcess, RedisServer

from circus_events import Bus, Event, Gap
from circus_events._config import BridgeConfig
from circus_events.protocol import (
    Codec,
    SubscriptionTopic,
    decode_frame,
    encode_frame,
    frame_to_redis,
)

X = SubscriptionTopic("x", True)
ORDERS = SubscriptionTopic("orders.", False)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``predicate`` on the loop until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)  # poll interval, not synchronisation


def make_frame(
    channel: str,
    seq: int,
    *,
    host: str = "A",
    payload: bytes = b"p",
    flags: int = 0,
    target: str | None = None,
) -> bytes:
    """A valid frame from worker ``<host>/w/1``, epoch 7."""
    return encode_frame(
        channel, origin=f"{host}/w/1".encode(), host=host.encode(), epoch=7, seq=seq,
        time=1.5, codec=Codec.RAW, payload=payload, flags=flags, target=target,
    )  # fmt: skip


def seqs(frames: list[bytes]) -> list[int]:
    return [decode_frame(f).seq for f in frames]


def clients(server: RedisServer, host: str) -> list[dict[str, Any]]:
    """The Redis connections of the bridge named ``host`` (by CLIENT SETNAME)."""
    found: list[dict[str, Any]] = server.client().client_list()
    return [c for c in found if c.get("name", "").startswith(f"circus-events:{host}:")]


class NotRedis:
    """A tiny real TCP server on 127.0.0.1 that is not Redis: each connection gets
    ``answer`` once something arrives and is then closed, or, with ``answer=None``,
    is accepted and never answered (a paused or wrong server)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "/0") -> str:
        return f"redis://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)  # kept open until close() when never answering
            if self.answer is not None:
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(self.answer)
                conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SidePeer:
    """One bridge Redis side ("host") running in the current loop, collecting what it
    receives. A subclass per side (RedisSide, StreamSide) sets ``side`` and ``ready``."""

    side: Any

    def __init__(self, url: str, host: str, **options: Any) -> None:
        options.setdefault("namespace", "t")
        self.config = BridgeConfig(redis_url=url, host=host, **options)
        self.frames: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def pair(
        cls,
        url: str,
        *interests: SubscriptionTopic,
        b_url: str | None = None,
        a: dict[str, Any] | None = None,
        b: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncIterator[tuple[Self, Self]]:
        """Hosts "A" and "B" (``options`` for both, ``a``/``b`` for one), B interested in
        ``interests``; both ready."""
        async with (
            cls(url, "A", **options, **(a or {})) as host_a,
            cls(b_url or url, "B", **options, **(b or {})) as host_b,
        ):
            for topic in interests:
                host_b.side.add_interest(topic)
            await host_a.ready()
            await host_b.ready()
            yield host_a, host_b

    async def __aenter__(self) -> Self:
        self.task = asyncio.create_task(self.side.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.side.close()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.side.status()
        return status

    async def ready(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def publish(self, frame: bytes) -> None:
        """One frame to the side, as the bridge hands it over."""
        self.side.publish(frame, frame.index(b"\0"))

    async def publish_all(self, frames: list[bytes], batch: int = 2000) -> None:
        """Publish like the bridge does: a batch per loop turn."""
        for start in range(0, len(frames), batch):
            for frame in frames[start : start + batch]:
                self.publish(frame)
            await asyncio.sleep(0)


def buffer_cap(frame: bytes, count: int) -> tuple[int, int]:
    """The bytes ``frame`` takes in a side's buffer, and a ``buffer_max_bytes`` with room
    for exactly ``count`` of them."""
    value_bytes = len(frame_to_redis(frame, frame.index(b"\0"), b"\0" * 8))
    return value_bytes, count * value_bytes + value_bytes // 2


async def kill_redis(server: RedisServer, peer: SidePeer) -> None:
    """SIGKILL redis-server; return once ``peer`` noticed."""
    server.kill()
    await until(lambda: not peer.status()["connected"], 5, f"{peer.config.host} notices the kill")


async def cancel_run(task: asyncio.Task[None], side: Any, server: RedisServer, host: str) -> None:
    """Cancel ``side.run()``: the side is closed and ``host``'s Redis connections go."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert side.status()["state"] == "closed"
    await until(lambda: not clients(server, host), 5, "connections closed")


class Collector:
    """Records what one in-test worker receives, and when."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Any]] = []
        self.gaps: list[Gap] = []
        self.lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        with self.lock:
            self.events.append((time.monotonic(), event.data))

    def data(self) -> list[Any]:
        with self.lock:
            return [d for _, d in self.events]

    @property
    def missed(self) -> int:
        return sum(g.missed for g in self.gaps)


def collecting_bus(bridge: BridgeProcess, pattern: str, worker: str) -> tuple[Bus, Collector]:
    """A Bus on ``bridge`` whose handler records into a Collector; synced."""
    collector = Collector()
    bus = Bus(
        dir=str(bridge.directory), host=bridge.host, worker=worker, on_gap=collector.gaps.append
    )
    bus.on(pattern)(collector.on_event)
    assert bus.sync(10), f"{worker} was not synced with its bridge and Redis"
    return bus, collector


def paced(bus: Bus, channel: str, rate: float, numbers: range, actions: dict[int, Any]) -> None:
    """Publish ``numbers`` at ``rate`` per second; run ``actions[n]()`` before number n."""
    start = time.monotonic()
    for i, n in enumerate(numbers):
        if n in actions:
            actions[n]()
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the stream, not synchronisation
        bus.publish(channel, n)
    assert bus.flush(10)
