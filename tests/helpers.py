"""Helpers shared by the Redis-side, stream-side and cross-host tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from conftest import BridgeProcess, RedisServer

from circus_events import Bus, Event, Gap
from circus_events.protocol import Codec, decode_frame, encode_frame


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
