"""What a subscriber pays to wake up: CPU per message one by one against back to back.

One bridge (no Redis), one subscriber in this process (``Bus.subscribe`` and
``get()``), one publisher process sending ``--messages`` 40-byte messages on
``load.x`` at ``--rate`` per second, each in a frame of its own. Two phases
in the same run, measured as this process's CPU time (all its threads,
libzmq's I/O thread included):

* **paced**: the subscriber reads while the messages arrive, one wake-up (of
  libzmq's I/O thread, then of the reading thread) per message;
* **back to back**: the bridge is stopped (SIGSTOP) while the publisher sends
  the same number of messages, then let go: the frames reach the
  subscriber together, and it handles them without sleeping in between.

The difference is what waking up costs per message, the part of a paced
subscriber's CPU that no per-frame Python cut can reach (README, "Many paced
publishers"). Measured on 2026-12-02 (2 cores, quiet): about 65 us per
message paced, 10-14 us back to back.

Usage::

    python benchmarks/subscriber_wakeups.py --messages 10000 --rate 2000
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from circus_events import Bus
from circus_events._client.limits import DEFAULT_SEND_QUEUE
from circus_events.client import Subscription

PUBLISHER = """
import sys, time
from circus_events import Bus
directory, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Bus(dir=directory, host="h", worker="publisher", codec="raw") as bus:
    start = time.monotonic()
    for n in range(count):
        pause = start + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing: one message, one frame
        bus.publish("load.x", b"x" * 40)
    print("sent", flush=True)  # all handed to the bus (queued, if the bridge is stopped)
    bus.flush()
"""


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling a condition with a deadline


def _receive(subscription: Subscription, count: int) -> int:
    """Take up to ``count`` events; stop after 2 s without one."""
    got = 0
    while got < count:
        try:
            subscription.get(timeout=2.0)
        except TimeoutError:
            break
        got += 1
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="messages/s, paced phase")
    args = parser.parse_args()
    if not 0 < args.messages <= DEFAULT_SEND_QUEUE:
        # The back-to-back phase queues them all in the publisher while its bridge is stopped.
        parser.error(f"--messages must be from 1 to {DEFAULT_SEND_QUEUE:,} (the send queue)")
    directory = tempfile.mkdtemp(prefix="ce-wakeups-")
    bridge = subprocess.Popen(
        [sys.executable, "-m", "circus_events", "bridge", "--dir", directory, "--host", "h"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    publish = [sys.executable, "-c", PUBLISHER, directory, str(args.messages)]
    try:
        with Bus(dir=directory, host="h", worker="subscriber", codec="raw") as bus:
            _wait_for(lambda: bus.sync(0.5), 15, "the bridge")
            subscription = bus.subscribe("load.*")
            if not bus.sync(10):
                raise SystemExit("the bridge did not confirm the subscription")

            publisher = subprocess.Popen([*publish, str(args.rate)], stdout=subprocess.DEVNULL)
            cpu = time.process_time()
            paced = _receive(subscription, args.messages)
            paced_cpu = time.process_time() - cpu
            publisher.wait()

            bridge.send_signal(signal.SIGSTOP)
            publisher = subprocess.Popen([*publish, str(args.rate)], stdout=subprocess.PIPE)
            assert publisher.stdout is not None
            if publisher.stdout.readline() != b"sent\n":  # into the stopped bridge
                raise SystemExit("the publisher failed")
            cpu = time.process_time()
            bridge.send_signal(signal.SIGCONT)
            together = _receive(subscription, args.messages)
            together_cpu = time.process_time() - cpu  # the final 2 s wait is idle
            publisher.wait()
    finally:
        bridge.send_signal(signal.SIGCONT)
        bridge.terminate()
        bridge.wait()
        shutil.rmtree(directory, ignore_errors=True)
    if not paced or not together:
        raise SystemExit(f"lost: {paced} paced and {together} back to back arrived")
    one_by_one, back_to_back = paced_cpu / paced * 1e6, together_cpu / together * 1e6
    print(f"paced at {args.rate:,.0f}/s: {paced:,} messages, {one_by_one:.1f} us each")
    print(f"back to back: {together:,} messages, {back_to_back:.1f} us each")
    print(f"waking up: about {one_by_one - back_to_back:.1f} us per message")


if __name__ == "__main__":
    main()
