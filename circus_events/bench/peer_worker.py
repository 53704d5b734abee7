"""One peer-library worker process (publisher or subscriber), run by path.

It runs with the peers' own interpreter (``.venv-bench-peers``), so it
imports only the standard library and the peer library, never
circus_events. Usage::

    python peer_worker.py '{"lib": "broadcaster", "role": "sub", ...}'

Protocol with the harness, one line each on stdin/stdout: the worker prints
``ready`` (a subscriber once a probe from the publisher reached it: its
subscription works; a publisher once connected, then it probes), the
publisher waits for ``go`` on stdin; in timeline mode subscribers stop on
``stop``. The last stdout line is the result as JSON.

Each worker has its own connection(s), as these libraries are used:

* ``broadcaster``: ``Broadcast(url)`` (Redis backend); ``await
  broadcast.publish(channel, str)`` per message; ``broadcast.subscribe``.
* ``channels``: ``channels_redis.pubsub.RedisPubSubChannelLayer``;
  ``group_send`` per message to a group every subscriber joined
  (``group_add`` of its ``new_channel()``), ``receive`` in subscribers.

Payloads are ``PAYLOAD_BYTES`` characters: a kind letter, the
``monotonic_ns`` of the send (20 digits), padding.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
import time
from typing import Any

PAYLOAD_BYTES = 100
SETUP_TIMEOUT = 30.0
IDLE_SECONDS = 2.0
PROBE_INTERVAL = 0.005


class Stdin:
    """Lines from the harness, read on a thread (asyncio has no portable stdin)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.event = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for line in sys.stdin:
            self.lines.append(line.strip())
            self.event.set()


def say(obj: Any) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


def payload(kind: str) -> str:
    head = f"{kind}{time.monotonic_ns():020d}"
    return head + "x" * (PAYLOAD_BYTES - len(head))


class Broadcaster:
    def __init__(self, url: str, channel: str) -> None:
        self.channel = channel
        self.broadcast = importlib.import_module("broadcaster").Broadcast(url)
        self.subscription: Any = None
        self.subscriber: Any = None

    async def connect(self, subscribe: bool) -> None:
        await self.broadcast.connect()
        if subscribe:
            self.subscription = self.broadcast.subscribe(self.channel)
            self.subscriber = await self.subscription.__aenter__()

    async def publish(self, text: str) -> None:
        await self.broadcast.publish(self.channel, text)

    async def receive(self) -> str:
        event = await self.subscriber.get()
        message = event.message
        return message.decode() if isinstance(message, bytes) else str(message)

    async def close(self) -> None:
        if self.subscription is not None:
            await self.subscription.__aexit__(None, None, None)
        await self.broadcast.disconnect()


class Channels:
    def __init__(self, url: str, channel: str) -> None:
        module = importlib.import_module("channels_redis.pubsub")
        self.layer = module.RedisPubSubChannelLayer(hosts=[url])
        self.group = channel
        self.name = ""
        # ``layer.receive`` unsubscribes when cancelled (a timeout would), so a
        # task pumps it into a queue that the harness' timeouts can wait on.
        self.received: asyncio.Queue[str] = asyncio.Queue()
        self.pump: asyncio.Task[None] | None = None

    async def connect(self, subscribe: bool) -> None:
        if subscribe:
            self.name = await self.layer.new_channel()
            await self.layer.group_add(self.group, self.name)
            self.pump = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            message = await self.layer.receive(self.name)
            self.received.put_nowait(str(message["p"]))

    async def publish(self, text: str) -> None:
        await self.layer.group_send(self.group, {"type": "bench.message", "p": text})

    async def receive(self) -> str:
        return await self.received.get()

    async def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.name:
            await self.layer.group_discard(self.group, self.name)
        await self.layer.flush()


async def publisher(lib: Any, spec: dict[str, Any], stdin: Stdin) -> dict[str, Any]:
    await lib.connect(False)
    say("ready")
    while not stdin.lines:  # probe until go: subscribers wait for one
        await lib.publish(payload("P"))
        await asyncio.sleep(PROBE_INTERVAL)
    cpu = time.process_time_ns()
    interval = int(1e9 / spec["rate"]) if spec["rate"] else 0
    now = time.monotonic_ns
    first = now()
    max_lag = 0
    for i in range(spec["messages"]):
        if interval:
            delay = first + i * interval - now()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            else:
                max_lag = max(max_lag, -delay)
        await lib.publish(payload("D"))
    last = now()
    cpu = time.process_time_ns() - cpu
    await lib.close()
    return {"first_ns": first, "last_send_ns": last, "published": spec["messages"],
            "max_lag_ns": max_lag, "cpu_ns": cpu}  # fmt: skip


async def subscriber(lib: Any, spec: dict[str, Any], stdin: Stdin) -> dict[str, Any]:
    await lib.connect(True)
    while True:  # ready once a probe arrives: the subscription works end to end
        text = await asyncio.wait_for(lib.receive(), SETUP_TIMEOUT)
        if text.startswith("P"):
            break
    say("ready")
    cpu = time.process_time_ns()
    now = time.monotonic_ns
    mode, warmup = spec["mode"], spec["warmup"]
    samples: list[int] = []
    count = first = last = 0
    timeout = SETUP_TIMEOUT
    while count < spec["messages"]:
        if mode == "timeline" and stdin.lines:
            break
        try:
            text = await asyncio.wait_for(lib.receive(), 0.1 if mode == "timeline" else timeout)
        except TimeoutError:
            if mode == "timeline":
                continue
            break
        if not text.startswith("D"):
            continue
        last = now()
        if not count:
            first = last
            timeout = IDLE_SECONDS
        if mode == "timeline":
            samples.append(last)
        elif mode == "latency" and count >= warmup:
            samples.append(last - int(text[1:21]))
        count += 1
    cpu = time.process_time_ns() - cpu
    await lib.close()
    return {"received": count, "first_ns": first, "last_ns": last, "samples": samples,
            "cpu_ns": cpu}  # fmt: skip


async def main(spec: dict[str, Any]) -> None:
    lib: Any = (Broadcaster if spec["lib"] == "broadcaster" else Channels)(
        spec["url"], spec["channel"]
    )
    stdin = Stdin()
    role = publisher if spec["role"] == "pub" else subscriber
    say(await role(lib, spec, stdin))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
