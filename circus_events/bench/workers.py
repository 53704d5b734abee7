"""The circus-events workers and figures of ``circus-events bench`` (and ``benchmarks/``).

* The circus-events worker processes (publisher, iterator subscriber,
  handler subscriber) and what they report.
* Payload stamps and publish pacing: every payload starts with the
  ``time.monotonic_ns()`` of its send (CLOCK_MONOTONIC is system-wide on
  Linux, so one-way latencies need no clock sync).
* Percentiles, per-process and per-thread CPU time from ``/proc``, and the
  worker-process launcher.

The worker functions run in ``multiprocessing`` children (forkserver), so
they live in an importable module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import statistics
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from circus_events import Bus

PAYLOAD_BYTES: Final = 100
STAMP: Final = struct.Struct("<Q")
#: Seconds a subscriber waits for the next message before it gives up (only
#: reached when messages were lost; the figures use the last receive time).
IDLE_SECONDS: Final = 2.0
#: Seconds any process start or handshake may take before the run fails.
SETUP_TIMEOUT: Final = 30.0


@dataclasses.dataclass(frozen=True)
class BusTarget:
    """Where a circus-events worker finds its bridge (one simulated host)."""

    dir: str
    namespace: str
    host: str


class WorkerSpec(Protocol):
    """What the shared worker processes read of a benchmark's run spec."""

    @property
    def mode(self) -> str: ...  # "throughput" or "latency"
    @property
    def messages(self) -> int: ...
    @property
    def rate(self) -> float: ...  # msg/s for latency runs; 0: as fast as possible
    @property
    def channel(self) -> str: ...
    @property
    def warmup(self) -> int: ...
    @property
    def codec(self) -> str: ...
    @property
    def pub_bus(self) -> BusTarget: ...  # the publisher's bridge
    @property
    def sub_bus(self) -> BusTarget: ...  # the subscribers' bridge


@dataclasses.dataclass
class PublisherResult:
    first_ns: int
    last_send_ns: int
    published: int
    max_lag_ns: int
    flushed: bool
    cpu_ns: int  # CPU time (all threads) from the start signal to the end


@dataclasses.dataclass
class SubscriberResult:
    received: int
    first_ns: int
    last_ns: int
    latencies: bytes  # array("q") of one-way latencies in ns, after warm-up
    reported_missed: int  # what circus-events itself counted as gaps (0 for baselines)
    cpu_ns: int  # CPU time (all threads) from ready to the last message


# -- payloads -------------------------------------------------------------------------


def json_pad(messages: int) -> str:
    """Padding that makes the JSON payload ~PAYLOAD_BYTES long (compact, as the codec writes)."""
    sample = {"t": time.monotonic_ns(), "i": messages, "pad": ""}
    base = len(json.dumps(sample, separators=(",", ":")))
    return "x" * max(0, PAYLOAD_BYTES - base)


def stamp_of(data: Any, codec: str) -> int:
    if codec == "json":
        stamp: int = data["t"]
        return stamp
    return int(STAMP.unpack_from(data)[0])


def pace(start_ns: int, index: int, interval_ns: int) -> int:
    """Sleep until message ``index`` is due; return how late we are (ns, >= 0)."""
    due = start_ns + index * interval_ns
    delay = due - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / 1e9)  # pacing the publish rate, not synchronisation
        return 0
    return -delay


# -- circus-events worker processes ---------------------------------------------------


def ce_publisher_main(spec: WorkerSpec, conn: Connection) -> None:
    from circus_events import Bus  # noqa: PLC0415

    target = spec.pub_bus
    with Bus(
        dir=target.dir,
        namespace=target.namespace,
        host=target.host,
        worker="bench-publisher",
        codec=spec.codec,
        publish_timeout=60,
    ) as bus:
        # Connected both ways, and the bridge answers: sync() first, so our inbox
        # subscription is in place before the flush marker comes back on it.
        if not (bus.sync(SETUP_TIMEOUT) and bus.flush(SETUP_TIMEOUT)):
            raise RuntimeError("publisher: the bridge did not answer sync/flush")
        conn.send("ready")
        conn.recv()
        cpu = time.process_time_ns()
        publish = bus.publish
        channel = spec.channel
        now = time.monotonic_ns
        interval = int(1e9 / spec.rate) if spec.rate else 0
        max_lag = 0
        first = now()
        if spec.codec == "json":
            pad = json_pad(spec.messages)
            for i in range(spec.messages):
                if interval:
                    max_lag = max(max_lag, pace(first, i, interval))
                publish(channel, {"t": now(), "i": i, "pad": pad})
        else:
            raw_pad = b"x" * (PAYLOAD_BYTES - STAMP.size)
            pack = STAMP.pack
            for i in range(spec.messages):
                if interval:
                    max_lag = max(max_lag, pace(first, i, interval))
                publish(channel, pack(now()) + raw_pad)
        last = now()
        flushed = bus.flush(60)
        cpu = time.process_time_ns() - cpu
    conn.send(PublisherResult(first, last, spec.messages, max_lag, flushed, cpu))


Made = TypeVar("Made")


@contextlib.contextmanager
def _subscribed(
    spec: WorkerSpec, conn: Connection, index: int, subscribe: Callable[[Bus], Made]
) -> Iterator[tuple[Bus, Made]]:
    """A subscriber's Bus: ``subscribe(bus)`` made, synced, the parent told "ready"."""
    from circus_events import Bus  # noqa: PLC0415

    target = spec.sub_bus
    with Bus(
        dir=target.dir,
        namespace=target.namespace,
        host=target.host,
        worker=f"bench-subscriber-{index}",
        codec=spec.codec,
    ) as bus:
        made = subscribe(bus)
        if not bus.sync(SETUP_TIMEOUT):
            raise RuntimeError(f"subscriber {index}: the bridge did not confirm the subscription")
        conn.send("ready")
        yield bus, made


def ce_subscriber_main(spec: WorkerSpec, conn: Connection, index: int) -> None:
    """A subscriber reading ``Bus.subscribe(...)`` with ``get``."""
    with _subscribed(spec, conn, index, lambda bus: bus.subscribe(spec.channel)) as (
        bus,
        subscription,
    ):
        cpu = time.process_time_ns()
        get = subscription.get
        now = time.monotonic_ns
        codec = spec.codec
        latency = spec.mode == "latency"
        samples = array("q")
        count = first = last = 0
        # The first message may take a while (the other processes are starting).
        timeout = SETUP_TIMEOUT
        while count < spec.messages:
            try:
                event = get(timeout=timeout)
            except queue.Empty:
                break
            data = event.data  # what a worker reads; decodes JSON
            last = now()
            if not count:
                first = last
                timeout = IDLE_SECONDS
            if latency and count >= spec.warmup:
                samples.append(last - stamp_of(data, codec))
            count += 1
        cpu = time.process_time_ns() - cpu
        missed = bus.stats()["missed"]
    conn.send(SubscriberResult(count, first, last, samples.tobytes(), missed, cpu))


def ce_handler_subscriber_main(spec: WorkerSpec, conn: Connection, index: int) -> None:
    """Like ``ce_subscriber_main``, with a ``Bus.on`` handler (on the receiver thread)."""
    from circus_events import Event  # noqa: PLC0415

    done = threading.Event()
    samples = array("q")
    state = [0, 0, 0]  # count, first, last
    latency = spec.mode == "latency"
    now = time.monotonic_ns

    def handle(event: Event) -> None:
        data = event.data
        last = now()
        count = state[0]
        if not count:
            state[1] = last
        state[2] = last
        if latency and count >= spec.warmup:
            samples.append(last - stamp_of(data, spec.codec))
        state[0] = count + 1
        if count + 1 >= spec.messages:
            done.set()

    with _subscribed(spec, conn, index, lambda bus: bus.on(spec.channel)(handle)) as (bus, _):
        cpu = time.process_time_ns()
        seen, since, limit = 0, time.monotonic(), SETUP_TIMEOUT
        while not done.wait(0.2):  # progress check, the handler sets ``done``
            if state[0] != seen:
                seen, since, limit = state[0], time.monotonic(), IDLE_SECONDS
            elif time.monotonic() - since > limit:
                break
        cpu = time.process_time_ns() - cpu
        missed = bus.stats()["missed"]
    conn.send(SubscriberResult(state[0], state[1], state[2], samples.tobytes(), missed, cpu))


# -- figures --------------------------------------------------------------------------


def percentile(ordered: list[int], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return float(ordered[rank - 1])


def latency_figures(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}
    figures = {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "p999": percentile(ordered, 0.999),
        "max": float(ordered[-1]),
        "mean": statistics.fmean(ordered),
    }
    figures = {k: v / 1000 for k, v in figures.items()}  # ns -> us
    figures["samples"] = float(len(ordered))
    return figures


_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _stat_cpu_ns(path: str) -> int:
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLOCK_TICKS


def process_cpu_ns(pid: int) -> int:
    """User + system CPU time of a process (all threads), from /proc; 10 ms ticks."""
    return _stat_cpu_ns(f"/proc/{pid}/stat")


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU time per thread of a process, keyed ``<name>`` (``<name>#<n>`` for repeats)."""
    result: dict[str, int] = {}
    task_dir = f"/proc/{pid}/task"
    for tid in sorted(os.listdir(task_dir), key=int):
        try:
            with open(f"{task_dir}/{tid}/comm") as comm:
                name = comm.read().strip()
            cpu = _stat_cpu_ns(f"{task_dir}/{tid}/stat")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        key, n = name, 1
        while key in result:
            n += 1
            key = f"{name}#{n}"
        result[key] = cpu
    return result


# -- processes ------------------------------------------------------------------------


class Workers:
    """The publisher and subscriber processes of one run, with a pipe each."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.processes: list[Any] = []
        self.conns: list[Connection] = []

    def start(self, target: Callable[..., None], *args: Any) -> Connection:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=target, args=(*args[:1], child, *args[1:]))
        process.daemon = True
        process.start()
        child.close()
        self.processes.append(process)
        self.conns.append(parent)
        return parent  # type: ignore[no-any-return]

    def expect(self, conn: Connection, timeout: float, what: str) -> Any:
        if not conn.poll(timeout):
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        try:
            return conn.recv()
        except EOFError:
            raise RuntimeError(f"{what}: the process died (see its traceback above)") from None

    def close(self) -> None:
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        for conn in self.conns:
            conn.close()


# -- fault timelines ------------------------------------------------------------------


def ce_timeline_subscriber_main(spec: WorkerSpec, conn: Connection, index: int) -> None:
    """A subscriber that records every receive time until the parent says "stop".

    Its ``latencies`` field carries the receive times (``monotonic_ns``), so
    the parent can draw delivered msg/s over time.
    """

    with _subscribed(spec, conn, index, lambda bus: bus.subscribe(spec.channel)) as (
        bus,
        subscription,
    ):
        cpu = time.process_time_ns()
        get = subscription.get
        now = time.monotonic_ns
        times = array("q")
        while not conn.poll(0):
            try:
                get(timeout=0.05)
            except queue.Empty:
                continue
            times.append(now())
            while True:  # drain what is queued before looking at the pipe again
                try:
                    get(timeout=0)
                except queue.Empty:
                    break
                times.append(now())
        conn.recv()
        cpu = time.process_time_ns() - cpu
        missed = bus.stats()["missed"]
    first = times[0] if times else 0
    last = times[-1] if times else 0
    conn.send(SubscriberResult(len(times), first, last, times.tobytes(), missed, cpu))
