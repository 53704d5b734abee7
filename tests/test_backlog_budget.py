"""Stuck subscribers, all together, hold at most ``backlog_max_bytes`` in a real bridge.

Each local subscriber's queue is bounded by itself (``per_subscriber_bytes``,
469 MiB with the defaults): stopped workers that take the same traffic share
its frames, ones that take different traffic add up. The bridge looks at
what each connection has not read (the kernel's ``SIOCOUTQ``) and cuts the
one behind longest once what the stuck ones hold together passes the budget
(``protocol.backlog``).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Final

import pytest
import zmq
from conftest import BridgeProcess, WorkerProcess, wait_until
from test_bridge_memory import Watch, rss

from circus_events import Bus
from circus_events.protocol import Reassembler, channel_topic

MiB: Final = 1024 * 1024
BUDGET: Final = 128 * MiB
PAYLOAD: Final = b"x" * (512 * 1024)
#: 500 MiB through the bridge: without the budget the stopped workers keep
#: all of it (549 MiB peak measured, against 194 MiB with it).
MESSAGES: Final = 1000
#: What the bridge holds besides the stuck ones: the healthy subscriber's
#: lag (pacing lets it fall 32 MiB behind), the publisher's frames not yet
#: read, the budget's overrun between two looks (1 MiB) and the allocator's
#: slack.
BESIDES: Final = 128 * MiB


@pytest.mark.timeout(180)
def test_stuck_subscribers_together_hold_at_most_the_budget_and_learn_their_loss(
    bridge_factory: Callable[..., BridgeProcess], workers: Callable[..., WorkerProcess]
) -> None:
    bridge = bridge_factory(args=("--backlog-max-bytes", str(BUDGET)))
    directory = str(bridge.directory)
    # --idle: a stopped worker's get() waits through the SIGSTOP on the monotonic clock.
    stuck = [
        workers("counter.py", "--dir", directory, "--worker", f"stuck-{n}", "--pattern", "big",
                "--idle", "300")
        for n in range(3)
    ]  # fmt: skip
    healthy = workers("counter.py", "--dir", directory, "--worker", "ok", "--pattern", "big")
    for worker in [*stuck, healthy]:
        worker.expect_line("READY")
    assert bridge.process is not None
    start = rss(bridge.process.pid)
    assert bridge.status()["limits"]["backlog_max_bytes"] == BUDGET
    published = 0
    try:
        with (
            Watch(bridge) as watch,
            Bus(dir=directory, worker="publisher", codec="raw", publish_timeout=30,
                send_queue=64) as publisher,
        ):  # fmt: skip

            def all_read_some() -> bool:
                nonlocal published
                publisher.publish("big", PAYLOAD)
                published += 1
                return bool(bridge.status()["pacing"]["subscribers"] >= len(stuck) + 2)

            # Until every subscriber socket (the four and the publisher's own) has
            # acknowledged a pace marker, so has read the first messages: a gap
            # is then what a stopped one missed after those.
            wait_until(all_read_some, 20, "every subscriber acknowledging a pace marker")
            for worker in stuck:
                worker.process.send_signal(signal.SIGSTOP)  # never reads again, as a hung worker
            for _ in range(MESSAGES):
                publisher.publish("big", PAYLOAD)
                published += 1

            def all_cut() -> bool:
                # Cut in turn as each passes the budget alone (they stopped
                # reading at slightly different points): sending on makes it so.
                nonlocal published
                for _ in range(32):
                    publisher.publish("big", PAYLOAD)
                    published += 1
                assert publisher.flush(30)
                return bool(bridge.status()["counters"]["cut_stuck_subscribers"] == len(stuck))

            wait_until(all_cut, 60, "the bridge cutting the three stopped workers")
            peak = watch.peak
            backlog = bridge.status()["backlog"]
            for worker in stuck:
                worker.process.send_signal(signal.SIGCONT)
            # Its libzmq reconnects and subscribes again: STOP until each has seen one.
            deadline = time.monotonic() + 60
            while any(w.process.poll() is None for w in stuck) and time.monotonic() < deadline:
                publisher.publish("big", b"STOP")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stuck[0].process.wait(0.05)
    finally:
        for worker in stuck:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGCONT)
    assert peak <= start + BUDGET + BESIDES, (start / MiB, peak / MiB)
    # Left: the healthy one and the publisher's own socket.
    assert backlog["subscribers"] == 2, backlog
    # The healthy one was never cut: everything, in order (the first STOP included).
    assert healthy.result() == {
        "received": published + 1,
        "last_seq": published + 1,
        "missed": 0,
        "in_order": True,
    }
    for worker in stuck:
        result = worker.result()
        assert result["in_order"] and result["missed"] > 0, result
        # Its loss, exactly: what it got and what its gaps report make up the STOP's seq.
        assert result["received"] + result["missed"] == result["last_seq"], result
    print(
        f"\nbridge RSS {start / MiB:.0f} -> peak {peak / MiB:.0f} MiB with 3 stopped "
        f"subscribers and {published} x 512 KiB (budget {BUDGET / MiB:.0f} MiB); {backlog}"
    )


@pytest.mark.timeout(120)
def test_a_plain_sub_socket_that_reads_is_never_cut_and_one_that_closes_is_forgotten(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """A subscriber that acknowledges no pace markers (a plain SUB socket, a
    client of your own) is judged from the kernel alone: one that keeps up
    leaves its socket writable and is charged nothing, however tight the
    budget. (One slower than its publishers is charged what it leaves in the
    bridge, and cut past the budget: no pace marker holds publishers for it.)"""
    bridge = bridge_factory(args=("--backlog-max-bytes", str(4 * MiB)))
    directory = str(bridge.directory)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, channel_topic("big"))
    sub.connect(f"ipc://{directory}/default/out.sock")
    joiner = Reassembler(2 * MiB)
    whole = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal whole
        while not stop.is_set():
            while sub.poll(50):
                whole += joiner.add(sub.recv()) is not None

    reader = threading.Thread(target=read, daemon=True)
    try:
        with Bus(dir=directory, worker="publisher", codec="raw", send_queue=64) as publisher:
            wait_until(lambda: bridge.status()["backlog"]["subscribers"] == 2, 20, "both known")

            def marking() -> bool:  # pace markers go out: the rejoin hold has opened
                publisher.publish("big", PAYLOAD)
                return bool(bridge.status()["pacing"]["subscribers"] >= 1)

            wait_until(marking, 20, "the publisher acknowledging a pace marker")
            reader.start()
            for n in range(400):  # 200 MiB, 50 times the budget, as fast as it reads
                try:
                    wait_until(lambda n=n: whole >= n - 4, 30, "the plain socket keeping up")
                except AssertionError:
                    cuts = bridge.counters()["cut_stuck_subscribers"]
                    raise AssertionError(f"read {whole} of {n} messages, {cuts} cut(s)") from None
                publisher.publish("big", PAYLOAD)
            assert publisher.flush(30)
            wait_until(lambda: whole >= 400, 30, "the plain socket reading it all")
            assert bridge.counters()["cut_stuck_subscribers"] == 0
            stop.set()
            reader.join(5)
            sub.close(linger=0)

            def forgotten() -> bool:  # found closed at the next look, which sending brings
                publisher.publish("big", PAYLOAD)
                return bool(bridge.status()["backlog"]["subscribers"] == 1)

            wait_until(forgotten, 20, "the closed socket forgotten")
            assert bridge.counters()["cut_stuck_subscribers"] == 0
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(5)
        sub.close(linger=0)
        context.term()
