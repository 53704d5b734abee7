"""Throughput of the bridge's Redis side in stream mode against raw redis-py, end to end.

Each case runs a publisher and a reader in two processes (two "hosts")
against a private redis-server and measures messages per second from the
first publish to the last message read:

* ``redis-py``: a pipelined ``XADD ... MAXLEN ~ N`` loop (``transaction=False``,
  1000 commands per ``execute``) and an ``XREAD COUNT 1000 BLOCK 1000`` loop
  that counts entries; hiredis parses both.
* ``StreamSide``: :meth:`StreamSide.publish` fed 2000 frames per loop turn (as
  the bridge drains its PULL socket) and a ``deliver`` that counts frames.

The retention is above the message count, so nothing is trimmed before it
is read.

Usage: ``python benchmarks/stream_side.py [--messages 300000] [--payload 100] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from typing import Any

from redis_side import CHANNEL, NAMESPACE, frames, start_redis

STREAM = f"circus-events:{NAMESPACE}:@stream:0"
RETENTION = 2_000_000


# -- redis-py ------------------------------------------------------------------------


def redispy_reader(port: int, count: int, ready: Any, result: Any) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis(port=port)
    cursor = client.xinfo_stream(STREAM)["last-generated-id"] if client.exists(STREAM) else "0-0"
    ready.set()
    seen = 0
    while seen < count:
        reply = client.xread({STREAM: cursor}, count=1000, block=5000)
        if not reply:
            break
        entries = reply[0][1]
        seen += len(entries)
        cursor = entries[-1][0]
    result.value = time.time()
    client.close()


def redispy_writer(port: int, values: list[bytes], start: Any) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    field = CHANNEL.encode()
    start.value = time.time()
    for i, value in enumerate(values):
        pipe.xadd(STREAM, {field: value}, maxlen=RETENTION, approximate=True)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()


# -- StreamSide ------------------------------------------------------------------------


def side_config(port: int, host: str) -> Any:
    from circus_events._config import BridgeConfig  # noqa: PLC0415

    return BridgeConfig(
        redis_url=f"redis://127.0.0.1:{port}/0",
        host=host,
        namespace=NAMESPACE,
        mode="stream",
        retention=RETENTION,
    )


def side_reader(port: int, count: int, ready: Any, result: Any) -> None:
    from circus_events.bridge.stream_side import StreamSide  # noqa: PLC0415
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

        side = StreamSide(side_config(port, "B"), deliver=deliver)
        task = asyncio.create_task(side.run())
        side.add_interest(SubscriptionTopic(CHANNEL, True))
        while not side.connected:
            await asyncio.sleep(0.01)
        ready.set()
        await asyncio.wait_for(done.wait(), 120)
        await side.close()
        await task

    asyncio.run(main())


def side_writer(port: int, batch: list[bytes], start: Any) -> None:
    from circus_events.bridge.stream_side import StreamSide  # noqa: PLC0415

    async def main() -> None:
        side = StreamSide(side_config(port, "A"), deliver=lambda frames: None)
        task = asyncio.create_task(side.run())
        while not side.status()["connected"]:
            await asyncio.sleep(0.01)
        topic_end = len(CHANNEL)
        publish = side.publish
        start.value = time.time()
        for i in range(0, len(batch), 2000):
            for frame in batch[i : i + 2000]:
                publish(frame, topic_end)
            await asyncio.sleep(0)
        while side.status()["published"] < len(batch):
            await asyncio.sleep(0.001)
        await side.close()
        await task

    asyncio.run(main())


def run_case(name: str, port: int, count: int, payload: int) -> float:
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    start = ctx.Value("d", 0.0)
    end = ctx.Value("d", 0.0)
    data = frames(count, payload)
    if name == "redis-py":
        from circus_events.protocol.envelope import frame_to_redis  # noqa: PLC0415

        node = b"\0" * 8
        values = [frame_to_redis(f, len(CHANNEL), node) for f in data]
        reader = ctx.Process(target=redispy_reader, args=(port, count, ready, end))
        writer = ctx.Process(target=redispy_writer, args=(port, values, start))
    else:
        reader = ctx.Process(target=side_reader, args=(port, count, ready, end))
        writer = ctx.Process(target=side_writer, args=(port, data, start))
    reader.start()
    if not ready.wait(30):
        raise RuntimeError("reader not ready")
    writer.start()
    writer.join(120)
    reader.join(120)
    if end.value == 0.0:
        raise RuntimeError(f"{name}: the reader did not receive every message")
    return count / (end.value - start.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="ce-bench-")
    proc, port = start_redis(directory)
    try:
        rates: dict[str, list[float]] = {"redis-py": [], "StreamSide": []}
        for _ in range(args.rounds):
            for name, values in rates.items():
                values.append(run_case(name, port, args.messages, args.payload))
        for name, values in rates.items():
            print(f"{name:>10}: median {statistics.median(values):>10,.0f} msg/s  "
                  f"(runs: {', '.join(f'{v:,.0f}' for v in values)})")  # fmt: skip
        ratio = statistics.median(rates["StreamSide"]) / statistics.median(rates["redis-py"])
        print(f"StreamSide / redis-py: {ratio:.2f}x "
              f"({args.messages:,} messages, {args.payload}-byte payloads)")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
