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
is read. The harness is shared with ``redis_side.py`` (``_side_bench.py``).

Usage: ``python benchmarks/stream_side.py [--messages 300000] [--payload 100] [--rounds 3]``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from _side_bench import CHANNEL, NAMESPACE, Bench, redis_url

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


def make_side(port: int, host: str, deliver: Callable[[list[bytes]], None]) -> Any:
    from circus_events._config import BridgeConfig  # noqa: PLC0415
    from circus_events.bridge.stream_side import StreamSide  # noqa: PLC0415

    config = BridgeConfig(
        redis_url=redis_url(port),
        host=host,
        namespace=NAMESPACE,
        mode="stream",
        retention=RETENTION,
    )
    return StreamSide(config, deliver=deliver)


BENCH = Bench(
    side_name="StreamSide",
    reader_word="reader",
    raw_reader=redispy_reader,
    raw_writer=redispy_writer,
    make_side=make_side,
    side_ready=lambda side: side.connected,
)

if __name__ == "__main__":
    BENCH.main(__doc__)
