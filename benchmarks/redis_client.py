"""The bridge's Redis hot loops on its own RESP client against redis-py's asyncio client.

Same run, same work, same batching, two "hosts" (a writer and a reader
process) against one private redis-server; messages per second from the
first publish to the last frame handed over on the reading host:

* ``resp``: the bridge's own Redis sides (:mod:`circus_events.bridge.resp`
  underneath): ``publish`` fed :data:`SIDE_BATCH` frames per loop turn (as
  the bridge drains its PULL socket; one write per turn, replies counted as
  they come) and the reader's ``deliver`` counting frames.
* ``redis-py``: ``redis.asyncio`` (hiredis parser) doing what the side does:
  each frame turned into its Redis value, :data:`SIDE_BATCH` commands per
  ``pipeline(transaction=False).execute()``; the reader filters its own
  node's values, rebuilds the local frame and hands it over: one
  ``PubSub.get_message`` per message (pub/sub mode) or one
  ``XREAD COUNT 1000 BLOCK 1000`` per batch (stream mode).

Both modes: ``pubsub`` (PUBLISH + SUBSCRIBE) and ``stream`` (XADD MAXLEN ~ +
XREAD). Cases run interleaved, ``--rounds`` times; medians and the ratio
redis-py / resp are printed. The issue's rule: redis-py within 0.8x of resp
on these loops would replace ``resp.py``.

Usage: ``python benchmarks/redis_client.py [--messages 200000] [--payload 100] [--rounds 5]``

Imports only ``circus_events`` (config, the two sides, the envelope) and
``redis``; starts its own redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

from circus_events._config import BridgeConfig
from circus_events.protocol import Codec, SubscriptionTopic, encode_frame, frame_to_redis
from circus_events.protocol.envelope import HEADER, NODE_ID_BYTES, REDIS_VERSION

CHANNEL = "bench.orders"
NAMESPACE = "bench"
#: Frames handed to the writer per loop turn (as the bridge drains its PULL socket).
SIDE_BATCH = 2000
#: Stream retention above any message count here: nothing is trimmed before it is read.
RETENTION = 2_000_000
MODES = ("pubsub", "stream")
CLIENTS = ("resp", "redis-py")


def config(port: int, host: str, mode: str) -> BridgeConfig:
    return BridgeConfig(
        redis_url=f"redis://127.0.0.1:{port}/0",
        host=host,
        namespace=NAMESPACE,
        mode=mode,
        retention=RETENTION,
    )


def make_frames(count: int, payload: int) -> list[bytes]:
    """``count`` local frames of one channel; the Redis loops never look inside."""
    one = encode_frame(
        CHANNEL, origin=b"bench/w/1", host=b"A", epoch=1, seq=1, time=0.0,
        codec=Codec.RAW, payload=b"x" * payload,
    )  # fmt: skip
    return [one] * count


def make_side(port: int, host: str, mode: str, deliver: Any) -> Any:
    from circus_events.bridge.redis_side import RedisSide  # noqa: PLC0415
    from circus_events.bridge.stream_side import StreamSide  # noqa: PLC0415

    kind = StreamSide if mode == "stream" else RedisSide
    return kind(config(port, host, mode), deliver=deliver)


# -- resp: the bridge's sides ---------------------------------------------------------


async def resp_reader(port: int, mode: str, count: int, ready: Any, end: Any) -> None:
    done = asyncio.Event()
    seen = 0

    def deliver(frames: list[bytes]) -> None:
        nonlocal seen
        seen += len(frames)
        if seen >= count:
            end.value = time.time()
            done.set()

    side = make_side(port, "B", mode, deliver)
    task = asyncio.create_task(side.run())
    side.add_interest(SubscriptionTopic(CHANNEL, True))
    async with asyncio.timeout(30):
        while not side.status()["subscriptions_settled"]:
            await asyncio.sleep(0.01)  # poll: setup only, not measured
    ready.set()
    async with asyncio.timeout(300):
        await done.wait()
    await side.close()
    await task


async def resp_writer(port: int, mode: str, frames: list[bytes], start: Any) -> None:
    side = make_side(port, "A", mode, lambda frames: None)
    task = asyncio.create_task(side.run())
    async with asyncio.timeout(30):
        while not side.status()["connected"]:
            await asyncio.sleep(0.01)  # poll: setup only, not measured
    publish = side.publish
    topic_end = len(CHANNEL)
    start.value = time.time()
    for i in range(0, len(frames), SIDE_BATCH):
        for frame in frames[i : i + SIDE_BATCH]:
            publish(frame, topic_end)
        await asyncio.sleep(0)  # the loop turn: the side writes its batch
    async with asyncio.timeout(300):
        while side.status()["published"] < len(frames):
            await asyncio.sleep(0.001)  # the writer's figure ends at the reader anyway
    await side.close()
    await task


# -- redis-py doing the same work --------------------------------------------------------


async def redispy_reader(port: int, mode: str, count: int, ready: Any, end: Any) -> None:
    import redis.asyncio as aredis  # noqa: PLC0415

    cfg = config(port, "B", mode)
    base = f"{cfg.redis_prefix}:{NAMESPACE}:".encode()
    stamp = bytes((REDIS_VERSION,)) + cfg.node_id
    offset = 1 + NODE_ID_BYTES
    shortest = offset + HEADER.size
    client = aredis.Redis(host="127.0.0.1", port=port)
    seen = 0

    def hand_over(frames: list[bytes]) -> None:
        nonlocal seen
        seen += len(frames)

    def local(channel: bytes, value: bytes) -> bytes | None:
        if value.startswith(stamp) or len(value) < shortest or value[0] != REDIS_VERSION:
            return None
        return b"".join((channel, b"\0", value[offset:]))

    if mode == "pubsub":
        pubsub = client.pubsub()
        await pubsub.subscribe(base + CHANNEL.encode())
        ready.set()
        while seen < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            if message is None:
                continue
            frame = local(message["channel"][len(base) :], message["data"])
            if frame is not None:
                hand_over([frame])
        await pubsub.aclose()
    else:
        key = base + b"@stream:0"
        cursor: bytes | str = "$"
        ready.set()
        while seen < count:
            reply = await client.xread({key: cursor}, count=1000, block=1000)
            frames = []
            for _, entries in reply:
                for entry_id, fields in entries:
                    for channel, value in fields.items():
                        frame = local(channel, value)
                        if frame is not None:
                            frames.append(frame)
                    cursor = entry_id
            if frames:
                hand_over(frames)
    end.value = time.time()
    await client.aclose()


async def redispy_writer(port: int, mode: str, frames: list[bytes], start: Any) -> None:
    import redis.asyncio as aredis  # noqa: PLC0415

    cfg = config(port, "A", mode)
    base = f"{cfg.redis_prefix}:{NAMESPACE}:".encode()
    key = base + b"@stream:0"
    node_id = cfg.node_id
    topic_end = len(CHANNEL)
    client = aredis.Redis(host="127.0.0.1", port=port)
    await client.ping()
    pipe = client.pipeline(transaction=False)
    start.value = time.time()
    for i in range(0, len(frames), SIDE_BATCH):
        for frame in frames[i : i + SIDE_BATCH]:
            topic = frame[:topic_end]
            value = frame_to_redis(frame, topic_end, node_id)
            if mode == "pubsub":
                pipe.publish(base + topic, value)
            else:
                pipe.xadd(key, {topic: value}, maxlen=RETENTION, approximate=True)
        await pipe.execute()
    await client.aclose()


# -- running ----------------------------------------------------------------------------


def _reader(client: str, port: int, mode: str, count: int, ready: Any, end: Any) -> None:
    run = resp_reader if client == "resp" else redispy_reader
    asyncio.run(run(port, mode, count, ready, end))


def _writer(client: str, port: int, mode: str, frames: list[bytes], start: Any) -> None:
    run = resp_writer if client == "resp" else redispy_writer
    asyncio.run(run(port, mode, frames, start))


def run_case(client: str, mode: str, port: int, frames: list[bytes]) -> float:
    ctx = mp.get_context("fork")
    ready, start, end = ctx.Event(), ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    reader = ctx.Process(target=_reader, args=(client, port, mode, len(frames), ready, end))
    writer = ctx.Process(target=_writer, args=(client, port, mode, frames, start))
    reader.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"{client}/{mode}: the reader did not get ready")
        writer.start()
        writer.join(300)
        reader.join(300)
    finally:
        for process in (writer, reader):
            if process.is_alive():
                process.kill()
                process.join()
    if end.value == 0.0 or start.value == 0.0:
        raise RuntimeError(f"{client}/{mode}: not every message arrived")
    return len(frames) / (end.value - start.value)


@contextlib.contextmanager
def redis_server() -> Any:
    """A private redis-server on a free port (no persistence); yields the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="ce-redis-client-")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)  # poll: the server starts on its own
        yield port
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", maxsplit=1)[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    frames = make_frames(args.messages, args.payload)
    modes = args.modes.split(",")
    rates: dict[tuple[str, str], list[float]] = {(m, c): [] for m in modes for c in CLIENTS}
    with redis_server() as port:
        for n in range(args.rounds):
            for mode in modes:
                # Alternate which client goes first: the machine's load drifts.
                for client in CLIENTS if n % 2 == 0 else CLIENTS[::-1]:
                    rates[mode, client].append(run_case(client, mode, port, frames))
                    with contextlib.suppress(Exception):
                        subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"],
                                       capture_output=True, check=False)  # fmt: skip
    for (mode, client), values in rates.items():
        print(f"{mode:>6} {client:>8}: median {statistics.median(values):>9,.0f} msg/s"
              f"  (runs: {', '.join(f'{v:,.0f}' for v in values)})")  # fmt: skip
    for mode in modes:
        ratio = statistics.median(rates[mode, "redis-py"]) / statistics.median(rates[mode, "resp"])
        print(f"{mode:>6}: redis-py / resp = {ratio:.2f}x")
    print(f"({args.messages:,} messages of {args.payload} bytes, {args.rounds} rounds, "
          f"{SIDE_BATCH} per loop turn; {time.strftime('%Y-%m-%d')})")  # fmt: skip


if __name__ == "__main__":
    main()
