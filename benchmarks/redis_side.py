"""Throughput of the bridge's Redis side against raw redis-py, end to end.

Each case runs a publisher and a subscriber in two processes (two "hosts")
against a private redis-server and measures messages per second from the
first publish to the last message received:

* ``redis-py``: a pipelined ``PUBLISH`` loop (``transaction=False``, 1000
  commands per ``execute``) and a ``PubSub.get_message`` reader; hiredis
  parses both.
* ``RedisSide``: :meth:`RedisSide.publish` fed 2000 frames per loop turn (as
  the bridge drains its PULL socket) and a ``deliver`` that counts frames.

Usage: ``python benchmarks/redis_side.py [--messages 300000] [--payload 100] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

CHANNEL = "bench.orders"
NAMESPACE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(10).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def frames(count: int, payload: int) -> list[bytes]:
    from circus_events.protocol import Codec, encode_frame  # noqa: PLC0415

    body = b"x" * payload
    return [
        encode_frame(CHANNEL, origin=b"bench/w/1", host=b"A", epoch=1, seq=i, time=0.0,
                     codec=Codec.RAW, payload=body)
        for i in range(count)
    ]  # fmt: skip


# -- redis-py ------------------------------------------------------------------------


def redispy_sub(port: int, count: int, ready: Any, result: Any) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis(port=port)
    pubsub = client.pubsub()
    pubsub.subscribe(f"circus-events:{NAMESPACE}:{CHANNEL}")
    pubsub.get_message(timeout=5)  # the subscribe confirmation
    ready.set()
    seen = 0
    while seen < count:
        message = pubsub.get_message(timeout=5)
        if message is None:
            break
        if message["type"] == "message":
            seen += 1
    result.value = time.time()
    pubsub.close()
    client.close()


def redispy_pub(port: int, values: list[bytes], start: Any) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis(port=port)
    channel = f"circus-events:{NAMESPACE}:{CHANNEL}"
    pipe = client.pipeline(transaction=False)
    start.value = time.time()
    for i, value in enumerate(values):
        pipe.publish(channel, value)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()


# -- RedisSide -------------------------------------------------------------------------


def side_config(port: int, host: str) -> Any:
    from circus_events._config import BridgeConfig  # noqa: PLC0415

    return BridgeConfig(redis_url=f"redis://127.0.0.1:{port}/0", host=host, namespace=NAMESPACE)


def side_sub(port: int, count: int, ready: Any, result: Any) -> None:
    from circus_events.bridge.redis_side import RedisSide  # noqa: PLC0415
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

        side = RedisSide(side_config(port, "B"), deliver=deliver)
        task = asyncio.create_task(side.run())
        side.add_interest(SubscriptionTopic(CHANNEL, True))
        while not side.status()["subscriptions_settled"]:
            await asyncio.sleep(0.01)
        ready.set()
        await asyncio.wait_for(done.wait(), 120)
        await side.close()
        await task

    asyncio.run(main())


def side_pub(port: int, batch: list[bytes], start: Any) -> None:
    from circus_events.bridge.redis_side import RedisSide  # noqa: PLC0415

    async def main() -> None:
        side = RedisSide(side_config(port, "A"), deliver=lambda frames: None)
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
        sub = ctx.Process(target=redispy_sub, args=(port, count, ready, end))
        pub = ctx.Process(target=redispy_pub, args=(port, values, start))
    else:
        sub = ctx.Process(target=side_sub, args=(port, count, ready, end))
        pub = ctx.Process(target=side_pub, args=(port, data, start))
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("subscriber not ready")
    pub.start()
    pub.join(120)
    sub.join(120)
    if end.value == 0.0:
        raise RuntimeError(f"{name}: the subscriber did not receive every message")
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
        rates: dict[str, list[float]] = {"redis-py": [], "RedisSide": []}
        for _ in range(args.rounds):
            for name, values in rates.items():
                values.append(run_case(name, port, args.messages, args.payload))
        for name, values in rates.items():
            print(f"{name:>10}: median {statistics.median(values):>10,.0f} msg/s  "
                  f"(runs: {', '.join(f'{v:,.0f}' for v in values)})")  # fmt: skip
        ratio = statistics.median(rates["RedisSide"]) / statistics.median(rates["redis-py"])
        print(f"RedisSide / redis-py: {ratio:.2f}x "
              f"({args.messages:,} messages, {args.payload}-byte payloads)")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
