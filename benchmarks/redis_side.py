"""Throughput of the bridge's Redis side against raw redis-py, end to end.

Each case runs a publisher and a subscriber in two processes (two "hosts")
against a private redis-server and measures messages per second from the
first publish to the last message received:

* ``redis-py``: a pipelined ``PUBLISH`` loop (``transaction=False``, 1000
  commands per ``execute``) and a ``PubSub.get_message`` reader; hiredis
  parses both.
* ``RedisSide``: :meth:`RedisSide.publish` fed 2000 frames per loop turn (as
  the bridge drains its PULL socket) and a ``deliver`` that counts frames.

The harness is shared with ``stream_side.py`` (``_side_bench.py``).

Usage: ``python benchmarks/redis_side.py [--messages 300000] [--payload 100] [--rounds 3]``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from _side_bench import CHANNEL, NAMESPACE, Bench, redis_url

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


def make_side(port: int, host: str, deliver: Callable[[list[bytes]], None]) -> Any:
    from circus_events._config import BridgeConfig  # noqa: PLC0415
    from circus_events.bridge.redis_side import RedisSide  # noqa: PLC0415

    config = BridgeConfig(redis_url=redis_url(port), host=host, namespace=NAMESPACE)
    return RedisSide(config, deliver=deliver)


BENCH = Bench(
    side_name="RedisSide",
    reader_word="subscriber",
    raw_reader=redispy_sub,
    raw_writer=redispy_pub,
    make_side=make_side,
    side_ready=lambda side: side.status()["subscriptions_settled"],
)

if __name__ == "__main__":
    BENCH.main(__doc__)
