"""What ``redis_side.py`` and ``stream_side.py`` share: payloads, the bridge-side
workers, one measured case and the command line.

Each script supplies its raw redis-py reader and writer, and how to build its
bridge side (:class:`RedisSide` or :class:`StreamSide`) and tell when that
side is ready to read. A case runs the reader and the writer in two forked
processes (two "hosts") against a private redis-server and measures messages
per second from the first publish to the last message read.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from circus_events.bench.infra import RedisServer

CHANNEL = "bench.orders"
NAMESPACE = "bench"
#: Frames the bridge-side writer hands to ``publish`` per loop turn (as the
#: bridge drains its PULL socket).
SIDE_BATCH = 2000

#: ``make_side(port, host, deliver)``: a RedisSide or StreamSide for host ``host``.
MakeSide = Callable[[int, str, Callable[[list[bytes]], None]], Any]


def redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def frames(count: int, payload: int) -> list[bytes]:
    from circus_events.protocol import Codec, encode_frame  # noqa: PLC0415

    body = b"x" * payload
    return [
        encode_frame(CHANNEL, origin=b"bench/w/1", host=b"A", epoch=1, seq=i, time=0.0,
                     codec=Codec.RAW, payload=body)
        for i in range(count)
    ]  # fmt: skip


def redis_values(data: list[bytes]) -> list[bytes]:
    """The frames as the bridge writes them to Redis (what the raw writer sends)."""
    from circus_events.protocol.envelope import frame_to_redis  # noqa: PLC0415

    node = b"\0" * 8
    return [frame_to_redis(f, len(CHANNEL), node) for f in data]


# -- the bridge side --------------------------------------------------------------------


def side_reader(
    make_side: MakeSide,
    is_ready: Callable[[Any], bool],
    port: int,
    count: int,
    ready: Any,
    result: Any,
) -> None:
    """Host B: a side whose ``deliver`` counts frames; ``result`` = time of the last."""
    from circus_events.protocol import SubscriptionTopic  # noqa: PLC0415

    async def main() -> None:
        seen = 0
        done = asyncio.Event()

        def deliver(batch: list[bytes]) -> None:
            nonlocal seen
            seen += len(batch)
            if seen >= count:
                result.value = time.time()
                done.set()

        side = make_side(port, "B", deliver)
        task = asyncio.create_task(side.run())
        side.add_interest(SubscriptionTopic(CHANNEL, True))
        while not is_ready(side):
            await asyncio.sleep(0.01)
        ready.set()
        await asyncio.wait_for(done.wait(), 120)
        await side.close()
        await task

    asyncio.run(main())


def side_writer(make_side: MakeSide, port: int, batch: list[bytes], start: Any) -> None:
    """Host A: ``publish`` fed SIDE_BATCH frames per loop turn, until all are out."""

    async def main() -> None:
        side = make_side(port, "A", lambda frames: None)
        task = asyncio.create_task(side.run())
        while not side.status()["connected"]:
            await asyncio.sleep(0.01)
        topic_end = len(CHANNEL)
        publish = side.publish
        start.value = time.time()
        for i in range(0, len(batch), SIDE_BATCH):
            for frame in batch[i : i + SIDE_BATCH]:
                publish(frame, topic_end)
            await asyncio.sleep(0)
        while side.status()["published"] < len(batch):
            await asyncio.sleep(0.001)
        await side.close()
        await task

    asyncio.run(main())


# -- running ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bench:
    """One script's comparison: raw redis-py against one bridge side."""

    side_name: str  # "RedisSide" or "StreamSide"
    reader_word: str  # what the error messages call the receiving process
    raw_reader: Callable[[int, int, Any, Any], None]  # (port, count, ready, end)
    raw_writer: Callable[[int, list[bytes], Any], None]  # (port, redis values, start)
    make_side: MakeSide
    side_ready: Callable[[Any], bool]  # the reading side may report ready

    def run_case(self, name: str, port: int, count: int, payload: int) -> float:
        ctx = mp.get_context("fork")
        ready = ctx.Event()
        start = ctx.Value("d", 0.0)
        end = ctx.Value("d", 0.0)
        data = frames(count, payload)
        if name == "redis-py":
            reader = ctx.Process(target=self.raw_reader, args=(port, count, ready, end))
            writer = ctx.Process(target=self.raw_writer, args=(port, redis_values(data), start))
        else:
            read = functools.partial(side_reader, self.make_side, self.side_ready)
            write = functools.partial(side_writer, self.make_side)
            reader = ctx.Process(target=read, args=(port, count, ready, end))
            writer = ctx.Process(target=write, args=(port, data, start))
        reader.start()
        if not ready.wait(30):
            raise RuntimeError(f"{self.reader_word} not ready")
        writer.start()
        writer.join(120)
        reader.join(120)
        if end.value == 0.0:
            raise RuntimeError(f"{name}: the {self.reader_word} did not receive every message")
        return float(count / (end.value - start.value))

    def main(self, doc: str | None) -> None:
        """The script: ``--messages``, ``--payload``, ``--rounds``; prints medians and the ratio."""
        parser = argparse.ArgumentParser(description=(doc or "").split("\n", maxsplit=1)[0])
        parser.add_argument("--messages", type=int, default=300_000)
        parser.add_argument("--payload", type=int, default=100)
        parser.add_argument("--rounds", type=int, default=3)
        args = parser.parse_args()
        directory = tempfile.mkdtemp(prefix="ce-bench-")
        redis = RedisServer(directory)
        try:
            redis.start()
            rates: dict[str, list[float]] = {"redis-py": [], self.side_name: []}
            for _ in range(args.rounds):
                for name, values in rates.items():
                    values.append(self.run_case(name, redis.port, args.messages, args.payload))
            for name, values in rates.items():
                print(f"{name:>10}: median {statistics.median(values):>10,.0f} msg/s  "
                      f"(runs: {', '.join(f'{v:,.0f}' for v in values)})")  # fmt: skip
            ratio = statistics.median(rates[self.side_name]) / statistics.median(rates["redis-py"])
            print(f"{self.side_name} / redis-py: {ratio:.2f}x "
                  f"({args.messages:,} messages, {args.payload}-byte payloads)")  # fmt: skip
        finally:
            redis.stop()
            shutil.rmtree(directory, ignore_errors=True)
