"""Stopping a bridge under load: a signal forwards what workers already handed over.

A publisher worker sends at a steady rate while its bridge (pub/sub mode) is
stopped and restarted; a raw PSUBSCRIBE on the bridge's Redis records what
reached Redis. Every message the worker sent must reach Redis or be missing
between two that did (which is how a subscriber sees a gap); nothing the
bridges took may be missing; and a clean stop must lose nothing the worker
handed over (before the fix, frames accepted into PULL after the final drain
were dropped at its close).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WORKERS, BridgeProcess, RedisServer, wait_until

from circus_events.protocol import decode_messages, frame_from_redis

PREFIX = b"circus-events:default:"
COUNT = 12000
RATE = 3000.0  # messages/s: four seconds of publishing
STOPS = 3
#: Messages a stop may still lose: those on the wire (written by the worker's
#: PUSH, not yet read by the bridge's libzmq) when the connection closes.
#: Before the fix a stop lost what arrived during its whole shutdown.
IN_FLIGHT = 10


class Recorder:
    """Every worker message that reaches Redis (not heartbeats), by sequence number."""

    def __init__(self, server: RedisServer) -> None:
        self.pubsub = server.client().pubsub()
        self.pubsub.psubscribe(PREFIX + b"*")
        assert self.pubsub.get_message(timeout=5)["type"] == "psubscribe"
        self.seqs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message: Any = self.pubsub.get_message(timeout=0.05)
            if message is None or message["type"] != "pmessage":
                continue
            topic = message["channel"][len(PREFIX) :]
            if topic.startswith(b"@"):
                continue  # a heartbeat or another bridge's record
            _, frame = frame_from_redis(topic, message["data"])
            envelope, _, bounds = decode_messages(frame)
            self.seqs.extend(envelope.seq + i for i in range(len(bounds) - 1))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()


def taken(log: Path) -> list[int]:
    """What each run of the bridge took from workers, from its "bridge stopped" lines."""
    found = re.findall(r"bridge stopped \(took (\d+) message", log.read_text())
    return [int(n) for n in found]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_under_load_forwards_what_workers_handed_over(
    bridge_factory: Callable[..., BridgeProcess], redis_server: RedisServer, signum: int
) -> None:
    bridge = bridge_factory(redis_url=redis_server.url)
    recorder = Recorder(redis_server)
    args = ["--dir", str(bridge.directory), "--count", str(COUNT), "--rate", str(RATE)]
    publisher = subprocess.Popen(
        [sys.executable, str(WORKERS / "publisher.py"), *args, "--worker", "steady"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for stop in range(STOPS):
            # Each stop while messages flow: wait for some to reach Redis first.
            wait_until(lambda n=stop: len(recorder.seqs) > (n + 1) * COUNT // (STOPS + 2), 15)
            assert bridge.process is not None
            bridge.process.send_signal(signum)
            assert bridge.process.wait(15) == 0
            bridge.process = None
            bridge.start()
        out, _ = publisher.communicate(timeout=30)
        assert out.strip() == "DONE"
        wait_until(lambda: COUNT in recorder.seqs, 15, "the last message in Redis")
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait(10)
        recorder.close()
    bridge.stop()
    seqs = recorder.seqs
    assert len(seqs) == len(set(seqs)), "a message reached Redis twice"
    assert set(seqs) <= set(range(1, COUNT + 1))  # sequence numbers start at 1
    runs = taken(bridge.log)
    assert len(runs) == STOPS + 1
    recorded = set(seqs)
    missing = set(range(1, COUNT + 1)) - recorded  # each lies before COUNT: a gap
    # One PUSH pipe is first in, first out: each bridge took the messages
    # after those the one before took (and those lost in between).
    end = lost = 0
    for stop, took in enumerate(runs[:-1]):
        first, end = end + lost + 1, end + lost + took
        lost = 0
        # Everything the stopping bridge took reached Redis...
        assert not missing & set(range(first, end + 1)), (stop, runs, sorted(missing))
        # ... and it took everything but what was on the wire.
        while end + lost + 1 in missing:
            lost += 1
        assert lost <= IN_FLIGHT, f"stop {stop} lost {lost}: {runs}, {sorted(missing)}"
        missing -= set(range(end + 1, end + lost + 1))
    assert not missing, f"lost outside a stop: {sorted(missing)} ({runs})"
    log = bridge.log.read_text()
    assert "not delivered to Redis" not in log and "Traceback" not in log
