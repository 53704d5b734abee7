"""How the worker clients end: from a signal handler, with a handler or a
publisher stuck, and across fork. Real bridge, real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import BridgeProcess, WorkerProcess, wait_until

from circus_events import AsyncBus, Bus, BusClosed, Event
from circus_events._client.limits import RECEIVER_JOIN_TIMEOUT

#: close() with everything bounded: the handler join, the held batch, the queue.
CLOSE_BOUND = RECEIVER_JOIN_TIMEOUT + 3


@pytest.mark.parametrize("publish_in_handler", [False, True])
def test_close_from_a_sigterm_handler_that_interrupted_publish_never_hangs(
    bridge: BridgeProcess,
    workers: Callable[..., WorkerProcess],
    publish_in_handler: bool,
) -> None:
    # A race (where the signal lands): several rounds; the old lock hung in most.
    extra = ("--publish-in-handler",) if publish_in_handler else ()
    for _ in range(8):
        worker = workers("sigterm_publisher.py", "--dir", str(bridge.directory), *extra)
        worker.expect_line("READY")
        worker.process.send_signal(signal.SIGTERM)
        try:
            code = worker.process.wait(CLOSE_BOUND)
        except Exception as exc:
            raise AssertionError("close() from the SIGTERM handler hung") from exc
        assert code == 0, worker.stderr_tail()


def test_close_returns_while_a_handler_still_runs_and_the_receiver_ends_quietly(
    bridge: BridgeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    uncaught: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    started, release = threading.Event(), threading.Event()

    def stuck(event: Event) -> None:
        started.set()
        release.wait(60)

    bus = Bus(dir=str(bridge.directory), worker="stuck")
    try:
        bus.on("s.*")(stuck)
        assert bus.sync(5)
        with Bus(dir=str(bridge.directory), worker="other") as other:
            other.publish("s.x", 1, scope="host")
        wait_until(started.is_set, 10, "the handler to start")
        begun = time.monotonic()
        bus.close()
        assert time.monotonic() - begun < CLOSE_BOUND
    finally:
        release.set()
    receiver = bus._thread
    wait_until(lambda: not receiver.is_alive(), 10, "the receiver thread to end")
    assert uncaught == []
    assert bus._context.closed  # ended by the receiver thread once its handler returned


class Blocked:
    """Publishes until a send blocks (bridge stopped); records how it ended."""

    def __init__(self) -> None:
        self.entered = 0.0  # monotonic time the current publish began, 0 between
        self.error: BaseException | None = None
        self.ended = 0.0

    def stuck_for(self, seconds: float) -> bool:
        return bool(self.entered) and time.monotonic() - self.entered > seconds


def test_close_stops_a_publish_blocked_on_a_stopped_bridge(bridge: BridgeProcess) -> None:
    bus = Bus(dir=str(bridge.directory), worker="blocked", send_queue=4, publish_timeout=60)
    blocked = Blocked()

    def publisher() -> None:
        try:
            for i in range(1_000_000):
                blocked.entered = time.monotonic()
                bus.publish("b.x", {"i": i, "pad": "x" * 60_000}, scope="host")
                blocked.entered = 0.0
        except BaseException as exc:  # recorded for the assertion
            blocked.error = exc
        blocked.ended = time.monotonic()

    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGSTOP)
    try:
        thread = threading.Thread(target=publisher, daemon=True)
        thread.start()
        wait_until(lambda: blocked.stuck_for(0.5), 20, "the publisher to block")
        begun = time.monotonic()
        bus.close()
        closed_in = time.monotonic() - begun
        thread.join(10)
        assert not thread.is_alive(), "the blocked publish did not notice close()"
        assert isinstance(blocked.error, BusClosed), repr(blocked.error)
        assert blocked.ended - begun < 2
        assert closed_in < CLOSE_BOUND
    finally:
        bridge.process.send_signal(signal.SIGCONT)


def test_async_close_gives_a_blocked_publish_bus_closed(bridge: BridgeProcess) -> None:
    async def scenario() -> BaseException | None:
        bus = await AsyncBus(
            dir=str(bridge.directory), worker="ablocked", send_queue=4, publish_timeout=60
        ).start()
        blocked = Blocked()

        async def publisher() -> None:
            for i in range(1_000_000):
                blocked.entered = time.monotonic()
                await bus.publish("b.x", {"i": i, "pad": "x" * 60_000}, scope="host")
                blocked.entered = 0.0

        task = asyncio.create_task(publisher())
        deadline = time.monotonic() + 20
        while not blocked.stuck_for(0.5):
            assert time.monotonic() < deadline, "the publisher never blocked"
            assert not task.done(), repr(task.exception())
            await asyncio.sleep(0.05)  # polling a condition, with a deadline
        await bus.close()
        try:
            await asyncio.wait_for(task, 10)
        except BaseException as exc:  # what the publisher got
            return exc
        return None

    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGSTOP)
    try:
        error = asyncio.run(scenario())
    finally:
        bridge.process.send_signal(signal.SIGCONT)
    assert isinstance(error, BusClosed), repr(error)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_a_forked_child_keeps_no_ghost_of_the_parents_subscriber(bridge: BridgeProcess) -> None:
    def subscribers() -> Any:
        status = bridge.status()
        return status["workers"]

    bus = Bus(dir=str(bridge.directory), worker="parent")
    bus.on("g.*")(lambda event: None)
    assert bus.sync(5)
    wait_until(lambda: subscribers() == ["parent"], 10, "the bridge to see the parent")
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own bus goes, then it just lives on
        try:
            bus.close()
            os.write(ready_w, b"x")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        bus.close()
        wait_until(lambda: subscribers() == [], 10, "the parent's subscriber to go")
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the child still lives
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, go_r, go_w):
            os.close(fd)
