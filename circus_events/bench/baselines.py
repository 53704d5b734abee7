"""The baselines' worker processes: raw pyzmq and raw redis-py (hiredis).

* pyzmq: a ``PUB`` publisher and ``SUB`` subscribers around the
  ``XSUB``/``XPUB`` proxy (:func:`.infra.zmq_proxy_main`), with
  ``ZMQ_XPUB_NODROP`` so a fast publisher is slowed down rather than losing
  messages at the high-water marks. Subscribers report ready once a probe
  from the publisher reached them (their subscription is in place).
* redis-py pub/sub: pipelined ``PUBLISH`` (``transaction=False``, ``batch``
  per ``execute()``), one ``PubSub`` connection per subscriber read with
  ``get_message``.
* redis-py streams: pipelined ``XADD MAXLEN ~``, one connection per
  subscriber looping on ``XREAD COUNT 1000 BLOCK``, from the start of a fresh
  stream (so nothing is missed before the first read).

Every payload is :data:`.workers.PAYLOAD_BYTES` long and starts with the
``monotonic_ns`` of its send.
"""

from __future__ import annotations

import time
from array import array
from multiprocessing.connection import Connection
from typing import Any, Final

import zmq

from .._client_core import DEFAULT_SEND_QUEUE, RECEIVE_HWM
from .spec import CaseSpec
from .workers import (
    IDLE_SECONDS,
    PAYLOAD_BYTES,
    SETUP_TIMEOUT,
    STAMP,
    PublisherResult,
    SubscriberResult,
    pace,
)

PUB_HWM: Final = DEFAULT_SEND_QUEUE  # the same buffering as a Bus
SUB_HWM: Final = RECEIVE_HWM
KIND_DATA: Final = 0x44  # "D": first byte after the topic
KIND_PROBE: Final = 0x50  # "P"
#: Stream length kept by the XADD baseline (approximate trimming, as the bridge).
STREAM_MAXLEN: Final = 1_000_000


def _payload_pad(used: int) -> bytes:
    return b"x" * (PAYLOAD_BYTES - used)


# -- pyzmq ------------------------------------------------------------------------------


def zmq_publisher_main(spec: CaseSpec, conn: Connection) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, PUB_HWM)
    pub.setsockopt(zmq.XPUB_NODROP, 1)  # a full pipe blocks send() instead of dropping
    pub.setsockopt(zmq.LINGER, 5000)
    pub.connect(spec.proxy_in)
    topic = spec.channel.encode() + b"\0"
    probe = topic + bytes((KIND_PROBE,))
    conn.send("ready")
    while not conn.poll(0.002):  # probe until go: subscribers wait for one
        pub.send(probe)
    conn.recv()
    cpu = time.process_time_ns()
    head = topic + bytes((KIND_DATA,))
    pad = _payload_pad(1 + STAMP.size)
    pack = STAMP.pack
    send = pub.send
    now = time.monotonic_ns
    interval = int(1e9 / spec.rate) if spec.rate else 0
    max_lag = 0
    first = now()
    for i in range(spec.messages):
        if interval:
            max_lag = max(max_lag, pace(first, i, interval))
        send(b"".join((head, pack(now()), pad)))
    last = now()
    pub.close()  # lingers until the proxy has taken everything
    context.term()
    cpu = time.process_time_ns() - cpu
    conn.send(PublisherResult(first, last, spec.messages, max_lag, True, cpu))


def zmq_subscriber_main(spec: CaseSpec, conn: Connection, index: int) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, SUB_HWM)
    topic = spec.channel.encode() + b"\0"
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(spec.proxy_out)
    kind_at = len(topic)
    stamp_at = kind_at + 1
    if not sub.poll(int(SETUP_TIMEOUT * 1000)):
        raise RuntimeError(f"subscriber {index}: no probe arrived")
    conn.send("ready")
    cpu = time.process_time_ns()
    recv = sub.recv
    now = time.monotonic_ns
    unpack = STAMP.unpack_from
    latency = spec.mode == "latency"
    samples = array("q")
    idle_ms = int(IDLE_SECONDS * 1000)
    count = first = last = 0
    while count < spec.messages:
        try:
            frame = recv(zmq.NOBLOCK)
        except zmq.Again:
            if not sub.poll(idle_ms if count else int(SETUP_TIMEOUT * 1000)):
                break
            continue
        if frame[kind_at] != KIND_DATA:
            continue
        last = now()
        if not count:
            first = last
        if latency and count >= spec.warmup:
            samples.append(last - unpack(frame, stamp_at)[0])
        count += 1
    cpu = time.process_time_ns() - cpu
    sub.close(linger=0)
    context.term()
    conn.send(SubscriberResult(count, first, last, samples.tobytes(), 0, cpu))


# -- redis-py ---------------------------------------------------------------------------


def _redis(spec: CaseSpec, name: str) -> Any:
    import redis  # noqa: PLC0415

    return redis.Redis(host="127.0.0.1", port=spec.redis_port, client_name=f"bench-{name}")


def redis_publisher_main(spec: CaseSpec, conn: Connection, maxlen: int = STREAM_MAXLEN) -> None:
    """Pipelined PUBLISH (``spec.system == "redis-pubsub"``) or XADD (``"redis-stream"``,
    ``MAXLEN ~ maxlen``)."""
    client = _redis(spec, "publisher")
    client.ping()
    conn.send("ready")
    conn.recv()
    cpu = time.process_time_ns()
    pipe = client.pipeline(transaction=False)
    execute = pipe.execute
    channel = spec.channel
    key = spec.stream_key
    stream = spec.system == "redis-stream"

    def send(value: bytes) -> None:
        if stream:
            pipe.xadd(key, {"d": value}, maxlen=maxlen, approximate=True)
        else:
            pipe.publish(channel, value)

    pad = _payload_pad(STAMP.size)
    pack = STAMP.pack
    now = time.monotonic_ns
    batch = spec.batch
    interval = int(1e9 / spec.rate) if spec.rate else 0
    max_lag = 0
    first = now()
    if interval:
        pending = 0
        for i in range(spec.messages):
            max_lag = max(max_lag, pace(first, i, interval))
            send(pack(now()) + pad)
            pending += 1
            # Send now unless the next message is already due (then it joins).
            if pending >= batch or now() < first + (i + 1) * interval:
                execute()
                pending = 0
    else:
        for i in range(spec.messages):
            send(pack(now()) + pad)
            if i % batch == batch - 1:
                execute()
    if len(pipe):
        execute()
    last = now()
    cpu = time.process_time_ns() - cpu
    client.close()
    conn.send(PublisherResult(first, last, spec.messages, max_lag, True, cpu))


def redis_subscriber_main(spec: CaseSpec, conn: Connection, index: int) -> None:
    """One connection per subscriber: SUBSCRIBE + get_message, or XREAD BLOCK."""
    import redis  # noqa: PLC0415

    client = _redis(spec, f"subscriber-{index}")
    stream = spec.system == "redis-stream"
    pubsub: Any = None
    if stream:
        client.ping()
    else:
        pubsub = client.pubsub()
        pubsub.subscribe(spec.channel)
        confirmation = pubsub.get_message(timeout=SETUP_TIMEOUT)
        if confirmation is None or confirmation["type"] != "subscribe":
            raise RuntimeError(f"subscriber {index}: Redis did not confirm SUBSCRIBE")
    conn.send("ready")
    cpu = time.process_time_ns()
    now = time.monotonic_ns
    unpack = STAMP.unpack_from
    latency = spec.mode == "latency"
    timeline = spec.mode == "timeline"
    samples = array("q")
    count = first = last = 0
    timeout = SETUP_TIMEOUT

    def take(data: bytes) -> None:
        nonlocal count, first, last, timeout
        last = now()
        if not count:
            first = last
            timeout = IDLE_SECONDS
        if timeline:
            samples.append(last)
        elif latency and count >= spec.warmup:
            samples.append(last - unpack(data)[0])
        count += 1

    try:
        if stream:
            key, cursor = spec.stream_key, "0-0"
            while count < spec.messages:
                reply = client.xread({key: cursor}, count=1000, block=int(timeout * 1000))
                if not reply:
                    break
                for entry_id, fields in reply[0][1]:
                    take(fields[b"d"])
                    cursor = entry_id
        else:
            get = pubsub.get_message
            while count < spec.messages and not (timeline and conn.poll(0)):
                message = get(timeout=0.1 if timeline else timeout)
                if message is None:
                    if timeline:
                        continue
                    break
                if message["type"] == "message":
                    take(message["data"])
    except redis.ConnectionError:
        pass  # Redis closed us (output buffer limit): the loss is counted
    if timeline:
        conn.recv()  # "stop"
    cpu = time.process_time_ns() - cpu
    if pubsub is not None:
        pubsub.close()
    client.close()
    conn.send(SubscriberResult(count, first, last, samples.tobytes(), 0, cpu))
