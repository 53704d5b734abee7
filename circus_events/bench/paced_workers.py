"""The worker processes of the paced benchmark (:mod:`.paced`).

Every publisher sends at a steady pace, sleeping between publishes (never
spinning), as a web worker does now and then: nothing ever arrives in a
burst for the client to batch. Message ``i`` of publisher ``p`` is due at
``start + phase(p) + i / rate``; a publisher that falls behind sends at once
(its achieved rate is reported, so a system that slows its publishers down
shows it). One message in :data:`SHARED_EVERY` goes to one of
:data:`SHARED_CHANNELS` shared channels, the others to the publisher's own.

Subscribers take every channel of the run with one pattern (``load.<run>.*``,
a Redis ``PSUBSCRIBE`` for the raw baseline) and record one-way latencies
(receive time minus the ``monotonic_ns`` stamp at the start of the payload)
of the messages sent after the warm-up, until they have everything or the
parent tells them to stop.

circus-events: ``Bus.publish`` per message (raw codec), ``Subscription.get``.
Raw redis-py: one connection per process, ``PUBLISH`` per message (one
round trip each, as a web worker does), ``PubSub.get_message``.
"""

from __future__ import annotations

import dataclasses
import queue
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any, Final

from .workers import PAYLOAD_BYTES, SETUP_TIMEOUT, STAMP, BusTarget

#: One message in this many goes to a shared channel.
SHARED_EVERY: Final = 4
#: Shared channels of a run (every publisher sends to each now and then).
SHARED_CHANNELS: Final = 2
#: Messages a subscriber takes between looks at its pipe (a stop request).
STOP_CHECK_EVERY: Final = 1024


@dataclasses.dataclass(frozen=True)
class PacedSpec:
    """One measurement of one system at one offered load (picklable)."""

    system: str  # "ce" or "raw"
    run: str  # unique per measurement: the channels' middle part
    publishers: int
    subscribers: int
    rate: float  # msg/s per publisher
    messages: int  # per publisher
    warmup_s: float  # latencies of messages sent earlier are not kept
    pub_bus: BusTarget
    sub_bus: BusTarget
    redis_port: int
    max_delay: float | None = None  # ce subscribers' (the ce-late system)

    @property
    def pattern(self) -> str:
        return f"load.{self.run}.*"

    def channels(self, publisher: int) -> tuple[str, list[str]]:
        """The publisher's own channel and the shared ones."""
        own = f"load.{self.run}.p{publisher}"
        return own, [f"load.{self.run}.shared{k}" for k in range(SHARED_CHANNELS)]

    @property
    def expected(self) -> int:
        """Messages each subscriber should receive."""
        return self.messages * self.publishers


@dataclasses.dataclass
class PacedPublished:
    first_ns: int  # when the first message was due
    last_ns: int
    published: int
    cpu_ns: int


@dataclasses.dataclass
class PacedReceived:
    received: int
    last_ns: int
    latencies: bytes  # array("q"), ns, messages sent after the warm-up
    cpu_ns: int
    reported_missed: int


def _paced_loop(spec: PacedSpec, index: int, start_ns: int, send: Any) -> None:
    """Call ``send(channel, payload)`` for each message when it is due."""
    own, shared = spec.channels(index)
    interval = 1e9 / spec.rate
    # Publishers are spread over one interval, so their messages interleave.
    phase = interval * index / spec.publishers
    pad = b"x" * (PAYLOAD_BYTES - STAMP.size)
    pack = STAMP.pack
    now = time.monotonic_ns
    sleep = time.sleep
    for i in range(spec.messages):
        delay = start_ns + phase + i * interval - now()
        if delay > 0:
            sleep(delay / 1e9)  # pacing the publish rate, not synchronisation
        channel = shared[(i // SHARED_EVERY) % SHARED_CHANNELS] if i % SHARED_EVERY == 3 else own
        send(channel, pack(now()) + pad)


def _await_go(conn: Connection) -> int:
    conn.send("ready")
    start_ns: int = conn.recv()
    return start_ns


def ce_paced_publisher_main(spec: PacedSpec, conn: Connection, index: int) -> None:
    from circus_events import Bus  # noqa: PLC0415

    target = spec.pub_bus
    with Bus(
        dir=target.dir,
        namespace=target.namespace,
        host=target.host,
        worker=f"paced-publisher-{index}",
        codec="raw",
        publish_timeout=60,
    ) as bus:
        if not (bus.sync(SETUP_TIMEOUT) and bus.flush(SETUP_TIMEOUT)):
            raise RuntimeError("publisher: the bridge did not answer sync/flush")
        start_ns = _await_go(conn)
        cpu = time.process_time_ns()
        _paced_loop(spec, index, start_ns, bus.publish)
        last = time.monotonic_ns()
        bus.flush(60)
        cpu = time.process_time_ns() - cpu
    conn.send(PacedPublished(start_ns, last, spec.messages, cpu))


def raw_paced_publisher_main(spec: PacedSpec, conn: Connection, index: int) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis(host="127.0.0.1", port=spec.redis_port, client_name="bench-paced")
    client.ping()
    start_ns = _await_go(conn)
    cpu = time.process_time_ns()
    _paced_loop(spec, index, start_ns, client.publish)
    last = time.monotonic_ns()
    cpu = time.process_time_ns() - cpu
    client.close()
    conn.send(PacedPublished(start_ns, last, spec.messages, cpu))


class _Recorder:
    """Counts receipts and keeps the latencies of messages sent after the warm-up."""

    def __init__(self, spec: PacedSpec, start_ns: int) -> None:
        self.count = 0
        self.last = 0
        self.samples = array("q")
        self.after = start_ns + int(spec.warmup_s * 1e9)

    def take(self, payload: bytes) -> None:
        self.last = now = time.monotonic_ns()
        sent: int = STAMP.unpack_from(payload)[0]
        if sent >= self.after:
            self.samples.append(now - sent)
        self.count += 1


def ce_paced_subscriber_main(spec: PacedSpec, conn: Connection, index: int) -> None:
    from circus_events import Bus  # noqa: PLC0415

    target = spec.sub_bus
    with Bus(
        dir=target.dir,
        namespace=target.namespace,
        host=target.host,
        worker=f"paced-subscriber-{index}",
        codec="raw",
        max_delay=spec.max_delay,
    ) as bus:
        subscription = bus.subscribe(spec.pattern)
        if not bus.sync(SETUP_TIMEOUT):
            raise RuntimeError(f"subscriber {index}: the bridge did not confirm the subscription")
        recorder = _Recorder(spec, _await_go(conn))
        cpu = time.process_time_ns()
        get = subscription.get
        take = recorder.take
        expected = spec.expected
        while recorder.count < expected:
            try:
                take(get(timeout=0.05).data)
            except queue.Empty:
                if conn.poll(0) or recorder.count + _lost(bus) >= expected:
                    break
                continue
            if recorder.count % STOP_CHECK_EVERY == 0 and conn.poll(0):
                break
        cpu = time.process_time_ns() - cpu
        missed = _lost(bus)
    _report(conn, recorder, cpu, missed)


def _lost(bus: Any) -> int:
    """Events a bus knows it lost: holes upstream and events dropped late."""
    stats = bus.stats()
    return int(stats["missed"] + stats["late"])


def raw_paced_subscriber_main(spec: PacedSpec, conn: Connection, index: int) -> None:
    import redis  # noqa: PLC0415

    client: Any = redis.Redis(host="127.0.0.1", port=spec.redis_port, client_name="bench-paced-sub")
    pubsub = client.pubsub()
    pubsub.psubscribe(spec.pattern)
    confirmation = pubsub.get_message(timeout=SETUP_TIMEOUT)
    if confirmation is None or confirmation["type"] != "psubscribe":
        raise RuntimeError(f"subscriber {index}: Redis did not confirm PSUBSCRIBE")
    recorder = _Recorder(spec, _await_go(conn))
    cpu = time.process_time_ns()
    get = pubsub.get_message
    take = recorder.take
    expected = spec.expected
    try:
        while recorder.count < expected:
            message = get(timeout=0.05)
            if message is None:
                if conn.poll(0):
                    break
                continue
            if message["type"] == "pmessage":
                take(message["data"])
                if recorder.count % STOP_CHECK_EVERY == 0 and conn.poll(0):
                    break
    except redis.ConnectionError:
        pass  # Redis closed us (output buffer limit): the loss is counted
    cpu = time.process_time_ns() - cpu
    pubsub.close()
    client.close()
    _report(conn, recorder, cpu, 0)


def _report(conn: Connection, recorder: _Recorder, cpu: int, missed: int) -> None:
    result = PacedReceived(recorder.count, recorder.last, recorder.samples.tobytes(), cpu, missed)
    conn.send(result)
