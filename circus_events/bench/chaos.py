"""A fault loop against real processes: what reaches whom when things die.

Theory of operation
-------------------
:class:`Chaos` starts a private redis-server (AOF, ``appendfsync always``),
two bridges (``host-a``, ``host-b``) as ``circus-events bridge`` processes,
four subscriber processes (two per host, ``chaos.*``) and three publisher
processes (two on ``host-a``, one on ``host-b``; each publishes its numbers
0, 1, 2... on ``chaos.<name>`` at ``rate`` per second). It then injects
faults one at a time (:meth:`Chaos.fault`): a bridge SIGKILLed and
restarted, a bridge SIGSTOPped and continued, Redis SIGKILLed and restarted
from its AOF, a subscriber SIGSTOPped and continued. At the end
(:meth:`Chaos.finish`), once both bridges serve their subscribers again with
their Redis subscriptions confirmed, the publishers stop, flush and send an
end marker, and each subscriber reports, per publisher: what it received
(count, distinct, repeats, out of order), and what its bus reported missed.

:func:`check` turns the reports into verdicts: in stream mode every
subscriber never stopped must have received every message once, in order;
in pub/sub mode every subscriber's received plus reported missed must equal
what was published, with no repeat. ``benchmarks/chaos.py`` runs it for
minutes and prints the figures; ``tests/test_chaos.py`` for a few dozen
faults.

Workers run as ``python -m circus_events.bench.chaos publisher|subscriber``,
driven through stdin (``stop``, ``report``) and answering one JSON line.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Final

from .servers import RedisServer

__all__ = ["FAULTS", "Chaos", "check"]

#: The faults, each with its weight in a random draw.
FAULTS: Final = {
    "bridge_kill": 3,
    "bridge_stop": 2,
    "redis_kill": 2,
    "subscriber_stop": 2,
}
#: Seconds a restarted bridge has to answer before the run fails.
BRIDGE_START_TIMEOUT: Final = 30.0
NAMESPACE: Final = "default"
PUBLISHERS: Final = (("p1", "host-a"), ("p2", "host-a"), ("p3", "host-b"))
SUBSCRIBERS: Final = (("s1", "host-a"), ("s2", "host-a"), ("s3", "host-b"), ("s4", "host-b"))


class _Bridge:
    def __init__(self, workdir: str, host: str, mode: str, redis_url: str) -> None:
        self.host = host
        self.directory = os.path.join(workdir, host)
        os.makedirs(self.directory, exist_ok=True)
        self.mode = mode
        self.env = {**os.environ, "CIRCUS_EVENTS_REDIS_URL": redis_url}
        self.log = os.path.join(workdir, f"bridge-{host}.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "circus_events", "bridge", "--dir", self.directory]
        command += ["--host", self.host, "--namespace", NAMESPACE, "--mode", self.mode]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )

    def answers(self) -> bool:
        from .._exceptions import NoBridgeAnswers  # noqa: PLC0415
        from ..control import query  # noqa: PLC0415

        try:
            return query(self.directory, NAMESPACE, "status", 0.5) is not None
        except NoBridgeAnswers:
            return False

    def signal(self, signum: int) -> None:
        if self.process is not None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


class _Worker:
    """A publisher or subscriber process, driven through its stdin."""

    def __init__(self, role: str, name: str, bridge: _Bridge, *extra: str) -> None:
        self.name = name
        self.host = bridge.host
        command = [sys.executable, "-m", "circus_events.bench.chaos", role, bridge.directory]
        command += [bridge.host, name, *extra]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def ask(self, command: str, timeout: float) -> Any:
        """Send a command; its one-line JSON answer (RuntimeError past ``timeout``)."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return json.loads(_read_line(stdout, timeout, self.name))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _read_line(stream: IO[bytes], timeout: float, name: str) -> bytes:
    found: list[bytes] = []
    reader = threading.Thread(target=lambda: found.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not found or not found[0]:
        raise RuntimeError(f"{name} did not answer within {timeout}s")
    return found[0]


class Chaos:
    """One fault-loop run (see the module docstring); a context manager."""

    def __init__(
        self,
        workdir: str,
        *,
        mode: str = "stream",
        rate: float = 300.0,
        seed: int | None = None,
        hold: tuple[float, float] = (0.2, 1.0),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.mode = mode
        self.rate = rate
        self.random = random.Random(seed)
        #: How long a fault lasts (s): drawn between these.
        self.hold = hold
        self.log = log or (lambda text: None)
        self.redis = RedisServer(workdir, aof=True)
        self.bridges: dict[str, _Bridge] = {}
        self.publishers: list[_Worker] = []
        self.subscribers: list[_Worker] = []
        #: Subscribers stopped at least once (not "alive throughout").
        self.stopped: set[str] = set()
        #: Faults injected, by kind.
        self.faults: dict[str, int] = dict.fromkeys(FAULTS, 0)

    def __enter__(self) -> Chaos:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.redis.start()
        for host in ("host-a", "host-b"):
            bridge = self.bridges[host] = _Bridge(self.workdir, host, self.mode, self.redis.url)
            bridge.start()
        for bridge in self.bridges.values():
            self._wait_answering(bridge)
        for name, host in SUBSCRIBERS:
            self.subscribers.append(_Worker("subscriber", name, self.bridges[host]))
        for worker in self.subscribers:
            worker.ask("ready", 60)
        for name, host in PUBLISHERS:
            self.publishers.append(_Worker("publisher", name, self.bridges[host], str(self.rate)))
        for worker in self.publishers:
            worker.ask("ready", 60)
        # Warm: every subscriber has heard every publisher (a receiver cannot
        # know it missed an origin's first messages: they are never a gap).
        deadline = time.monotonic() + 60
        for worker in self.subscribers:
            while len(worker.ask("report", 60)["origins"]) < len(self.publishers):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker.name} heard no publisher")
                time.sleep(0.05)  # poll interval: the loop re-checks

    def _wait_answering(self, bridge: _Bridge) -> None:
        deadline = time.monotonic() + BRIDGE_START_TIMEOUT
        while not bridge.answers():
            if bridge.process is not None and bridge.process.poll() is not None:
                raise RuntimeError(f"bridge {bridge.host} exited; see {bridge.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"bridge {bridge.host} did not answer; see {bridge.log}")
            time.sleep(0.05)  # poll interval: the loop re-checks

    def fault(self, kind: str | None = None) -> str:
        """Inject one fault (drawn at random unless ``kind``), wait for the
        system to be whole again; returns what was done."""
        if kind is None:
            kinds = list(FAULTS)
            kind = self.random.choices(kinds, [FAULTS[k] for k in kinds])[0]
        hold = self.random.uniform(*self.hold)
        what = kind
        if kind in ("bridge_kill", "bridge_stop"):
            bridge = self.bridges[self.random.choice(sorted(self.bridges))]
            what = f"{kind} {bridge.host} {hold:.2f}s"
            if kind == "bridge_kill":
                bridge.kill()
                time.sleep(hold)  # the fault's length
                bridge.start()
                self._wait_answering(bridge)
            else:
                bridge.signal(signal.SIGSTOP)
                time.sleep(hold)  # the fault's length
                bridge.signal(signal.SIGCONT)
        elif kind == "redis_kill":
            what = f"{kind} {hold:.2f}s"
            self.redis.kill()
            time.sleep(hold)  # the fault's length
            self.redis.start()
        else:
            worker = self.random.choice(self.subscribers)
            what = f"{kind} {worker.name} {hold:.2f}s"
            self.stopped.add(worker.name)
            worker.process.send_signal(signal.SIGSTOP)
            time.sleep(hold)  # the fault's length
            worker.process.send_signal(signal.SIGCONT)
        self.faults[kind] += 1
        self.log(what)
        return what

    def _wait_whole(self, bridge: _Bridge) -> None:
        """Until ``bridge`` serves its subscribers again and Redis has confirmed
        their interest. The end markers go out after this: one that left while
        the other host was still resubscribing would be lost with nothing after
        it to reveal the loss (pub/sub keeps nothing), an unreportable tail."""
        from .._exceptions import NoBridgeAnswers  # noqa: PLC0415
        from ..control import query  # noqa: PLC0415

        expected = {name for name, host in SUBSCRIBERS if host == bridge.host}
        deadline = time.monotonic() + BRIDGE_START_TIMEOUT
        status: Any = None
        while True:
            with contextlib.suppress(NoBridgeAnswers):
                status = query(bridge.directory, NAMESPACE, "status", 0.5)
            if status is not None and _whole(status, expected):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"bridge {bridge.host} is not whole again: {status}")
            time.sleep(0.05)  # poll interval: the loop re-checks

    def finish(self, timeout: float = 120.0) -> dict[str, Any]:
        """Stop publishing once every bridge is whole again (:meth:`_wait_whole`),
        collect every report (see :func:`check`)."""
        for bridge in self.bridges.values():
            bridge.signal(signal.SIGCONT)
            self._wait_answering(bridge)
        for bridge in self.bridges.values():
            self._wait_whole(bridge)
        published = {w.name: w.ask("stop", timeout) for w in self.publishers}
        deadline = time.monotonic() + timeout
        reports: dict[str, Any] = {}
        for worker in self.subscribers:
            while True:
                report = worker.ask("report", timeout)
                if set(report["ended"]) >= set(published) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)  # poll interval: the loop re-checks
            reports[worker.name] = report
        return {
            "mode": self.mode,
            "faults": dict(self.faults),
            "stopped": sorted(self.stopped),
            "published": published,
            "subscribers": reports,
        }

    def close(self) -> None:
        for worker in self.publishers + self.subscribers:
            with contextlib.suppress(Exception):
                worker.stop()
        for bridge in self.bridges.values():
            with contextlib.suppress(Exception):
                bridge.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()


def _whole(status: dict[str, Any], subscribers: set[str]) -> bool:
    """A bridge's status says: its subscribers are back and Redis confirmed their interest."""
    redis = status.get("redis") or {}
    return (
        subscribers <= set(status.get("workers", ()))
        and status.get("patterns", 0) >= 1
        and redis.get("state") == "connected"
        and bool(redis.get("subscriptions_settled", True))  # stream mode: nothing to settle
    )


def check(result: dict[str, Any]) -> list[str]:
    """What went wrong (empty: nothing): the verdicts of the module docstring."""
    problems = []
    stream = result["mode"] == "stream"
    for name, report in result["subscribers"].items():
        throughout = name not in result["stopped"]
        for origin, sent in result["published"].items():
            count = sent["published"]
            got = report["origins"].get(origin, _EMPTY)
            where = f"{name} from {origin}"
            if origin not in report["ended"]:
                problems.append(f"{where}: no end marker")
            if got["repeats"]:
                problems.append(f"{where}: {got['repeats']} received twice")
            if stream and throughout:
                if got["distinct"] != count or got["first"] != 0:
                    problems.append(f"{where}: {count - got['distinct']} of {count} lost")
                if got["out_of_order"]:
                    problems.append(f"{where}: {got['out_of_order']} out of order")
            elif got["distinct"] + got["missed"] != count:
                problems.append(
                    f"{where}: received {got['distinct']} + missed {got['missed']} != {count}"
                    f" (first {got['first']}, holes {got.get('holes')})"
                )
    return problems


_EMPTY: Final = {
    "count": 0, "distinct": 0, "repeats": 0, "out_of_order": 0, "first": None, "missed": 0,
}  # fmt: skip


# -- the worker processes -------------------------------------------------------------


def _commands() -> Any:
    for line in sys.stdin:
        yield line.strip()


def _answer(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def publisher_main(directory: str, host: str, name: str, rate: float) -> None:
    """Publish 0, 1, 2... on ``chaos.<name>`` at ``rate``/s until ``stop``."""
    from circus_events import Bus  # noqa: PLC0415

    stop = threading.Event()
    count = [0]
    with Bus(dir=directory, host=host, worker=name, publish_timeout=60) as bus:

        def run() -> None:
            channel = f"chaos.{name}"
            start = time.monotonic()
            while not stop.is_set():
                pause = start + count[0] / rate - time.monotonic()
                if pause > 0:
                    stop.wait(pause)  # pacing the stream
                bus.publish(channel, count[0])
                count[0] += 1

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        for command in _commands():
            if command == "ready":
                _answer("ok")
            elif command == "stop":
                stop.set()
                thread.join(60)
                flushed = bus.flush(60)
                bus.publish(f"chaos.{name}", "end")
                _answer({"published": count[0], "flushed": flushed and bus.flush(60)})
                return


def subscriber_main(directory: str, host: str, name: str) -> None:
    """Record what arrives on ``chaos.*``, per origin; answer ``report``."""
    from circus_events import Bus, Event, Gap  # noqa: PLC0415

    lock = threading.Lock()
    seen: dict[str, list[int]] = {}
    missed: dict[str, int] = {}
    ended: set[str] = set()

    def on_gap(gap: Gap) -> None:
        with lock:
            missed[gap.origin] = missed.get(gap.origin, 0) + gap.missed

    with Bus(dir=directory, host=host, worker=name, on_gap=on_gap) as bus:

        @bus.on("chaos.*")
        def record(event: Event) -> None:
            with lock:
                if event.data == "end":
                    ended.add(event.origin)
                else:
                    seen.setdefault(event.origin, []).append(event.data)

        synced = bus.sync(60)
        for command in _commands():
            if command == "ready":
                _answer({"synced": synced})
            elif command == "report":
                with lock:
                    _answer({"ended": sorted(ended), "origins": _figures(seen, missed)})


def _figures(seen: dict[str, list[int]], missed: dict[str, int]) -> dict[str, Any]:
    figures = {}
    for origin in set(seen) | set(missed):
        numbers = seen.get(origin, [])
        distinct = len(set(numbers))
        figures[origin] = {
            "count": len(numbers),
            "distinct": distinct,
            "repeats": len(numbers) - distinct,
            "out_of_order": sum(1 for a, b in itertools.pairwise(numbers) if b < a),
            "first": numbers[0] if numbers else None,
            "missed": missed.get(origin, 0),
            "holes": _holes(numbers),
        }
    return figures


def _holes(numbers: list[int], most: int = 5) -> list[tuple[int, int]]:
    """The first few ranges missing below the highest number received."""
    have = set(numbers)
    holes: list[tuple[int, int]] = []
    start = None
    for n in range(max(have, default=-1) + 1):
        if n not in have and start is None:
            start = n
        elif n in have and start is not None:
            holes.append((start, n - 1))
            start = None
            if len(holes) >= most:
                break
    return holes


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "publisher":
        publisher_main(args[0], args[1], args[2], float(args[3]))
    else:
        subscriber_main(args[0], args[1], args[2])
