"""Memory bounded in bytes: a real bridge process against stuck subscribers, floods
of subscriptions, garbage frames and malformed control requests.

RSS is read from /proc/<pid>/status (VmRSS). The bound checked is the one the
README documents: the bridge's own baseline, plus per subscriber and per
publisher what ``status`` reports under ``limits`` (frames share their
memory between subscribers, so the real figure stays well below it).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest
import zmq
from conftest import (
    WORKERS,
    BridgeProcess,
    RedisServer,
    WorkerProcess,
    query_bridge,
    wait_until,
)

from circus_events import Bus
from circus_events._config import BridgeConfig
from circus_events._exceptions import ConfigError
from circus_events.plugin import parse_plugin_options
from circus_events.protocol import LOCAL_FRAME_MAX, Reassembler, channel_topic

MiB: Final = 1024 * 1024
#: How long the publisher sends 512 KiB messages at a stuck
#: subscriber (the issue's figure).
STUCK_SECONDS: Final = 30.0
STUCK_PAYLOAD: Final = 512 * 1024
#: Flat out, no pacing by the test: the bridge holds the publisher back while a
#: healthy subscriber is ``pace_bytes`` behind (joining 22 pieces and copying
#: 512 KiB per message, one reads about half as fast as the bridge relays
#: here), and stops waiting for the stuck one after ``stall_timeout``.
#: What the allocator may add around the documented bound (arenas, fragments).
ALLOCATOR_SLACK: Final = 32 * MiB
#: The issue's figure: after an attack the bridge is back within this of its start.
RECOVERED_WITHIN: Final = 50 * MiB


def rss(pid: int) -> int:
    """Resident set of a process, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Watch:
    """Samples a bridge's RSS and how long ``status`` takes, in a thread."""

    def __init__(self, bridge: BridgeProcess, status_every: float = 0.2) -> None:
        assert bridge.process is not None
        self.bridge = bridge
        self.pid = bridge.process.pid
        self.peak = rss(self.pid)
        self.slowest_status = 0.0
        self.unanswered = 0
        self._status_every = status_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        next_status = 0.0
        while not self._stop.wait(0.02):  # sampling period, not synchronisation
            with contextlib.suppress(FileNotFoundError):
                self.peak = max(self.peak, rss(self.pid))
            if time.monotonic() >= next_status:
                started = time.monotonic()
                answer = query_bridge(self.bridge.directory, self.bridge.namespace, timeout=1.0)
                self.slowest_status = max(self.slowest_status, time.monotonic() - started)
                self.unanswered += answer is None
                next_status = time.monotonic() + self._status_every


class RawSubscriber:
    """A SUB peer speaking ZMTP 3.0 by hand over the ipc socket, so a test can send
    any subscription frame without libzmq's client side storing it (an 8 MB
    topic overflows the stack of libzmq's own subscription trie)."""

    GREETING: Final = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL" + bytes(16) + bytes(32)

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        body = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
        self.sock.sendall(self.GREETING + b"\x04" + bytes([len(body)]) + body)

    def subscribe(self, topics: list[bytes]) -> None:
        """Send subscription messages (``\\x01`` + topic), many per write."""
        out = bytearray()
        for topic in topics:
            frame = b"\x01" + topic
            if len(frame) < 256:
                out += b"\x00" + bytes([len(frame)]) + frame
            else:
                out += b"\x02" + struct.pack(">Q", len(frame)) + frame
        self.sock.sendall(out)

    def close(self) -> None:
        self.sock.close()


def documented_bound(start: int, limits: dict[str, int], subscribers: int, publishers: int) -> int:
    """The README's formula, from a measured baseline."""
    return (
        start
        + subscribers * limits["per_subscriber_bytes"]
        + publishers * limits["per_publisher_bytes"]
        + ALLOCATOR_SLACK
    )


@pytest.mark.timeout(240)
def test_a_stuck_subscriber_costs_the_bridge_its_budget_and_learns_its_exact_loss(
    bridge_factory: Callable[..., BridgeProcess], workers: Callable[..., WorkerProcess]
) -> None:
    bridge = bridge_factory()  # the defaults: their bound is the README's
    directory = str(bridge.directory)
    # Its get() waits through the SIGSTOP, and the monotonic clock runs on while
    # it is stopped: a 30 s idle limit would be spent before it wakes.
    stuck = workers(
        "counter.py", "--dir", directory, "--worker", "stuck", "--pattern", "big", "--idle", "300"
    )
    healthy = [
        workers("counter.py", "--dir", directory, "--worker", f"ok-{n}", "--pattern", "big")
        for n in range(2)
    ]
    for worker in [stuck, *healthy]:
        worker.expect_line("READY")
    limits = bridge.status()["limits"]
    assert bridge.process is not None
    start = rss(bridge.process.pid)
    payload = b"x" * STUCK_PAYLOAD
    published = 0
    with (
        Watch(bridge) as watch,
        # 64 frames queued (32 MiB): the client bounds its send queue in frames
        # only, and by default 20,000 x 512 KiB would move the backlog into this
        # process (6 GiB measured) instead of making publish wait.
        Bus(
            dir=directory, worker="publisher", codec="raw", publish_timeout=30, send_queue=64
        ) as publisher,
    ):

        def all_pacing() -> bool:
            nonlocal published
            publisher.publish("big", payload)
            published += 1
            return bool(bridge.status()["pacing"]["subscribers"] >= 4)

        # Until every subscriber socket (the three and the publisher's own) has
        # acknowledged a pace marker: the stuck one is then known to pace, and
        # must be found stuck, before it hangs.
        wait_until(all_pacing, 20, "every subscriber acknowledging a pace marker")
        stuck.process.send_signal(signal.SIGSTOP)  # never reads again, as a hung worker
        begin = time.monotonic()
        while time.monotonic() < begin + STUCK_SECONDS:
            publisher.publish("big", payload)
            published += 1
        elapsed = time.monotonic() - begin
        flush_started = time.monotonic()
        assert publisher.flush(30)
        flushed_in = time.monotonic() - flush_started
        # 3 subscribers and the publisher's own inbox socket; one publisher.
        bound = documented_bound(start, limits, subscribers=4, publishers=1)
        assert watch.peak <= bound, (watch.peak / MiB, bound / MiB)
        # Not tighter than that: on a loaded machine the healthy subscribers
        # and the bridge's own reading of the publisher lag too, each within
        # its own budget, and the documented bound counts every one.
        stuck.process.send_signal(signal.SIGCONT)
        # STOP after it wakes so it can see the hole, repeated because the first
        # ones may meet its still-full queue and be dropped too.
        stop_deadline = time.monotonic() + 60
        while stuck.process.poll() is None and time.monotonic() < stop_deadline:
            publisher.publish("big", b"STOP")
            with contextlib.suppress(subprocess.TimeoutExpired):
                stuck.process.wait(0.05)
    assert watch.unanswered == 0 and watch.slowest_status < 1.0
    for worker in healthy:
        result = worker.result()
        # Everything, in order: the first STOP is message published + 1.
        assert result == {
            "received": published + 1,
            "last_seq": published + 1,
            "missed": 0,
            "in_order": True,
        }
    result = stuck.result()
    assert result["in_order"]
    assert result["missed"] > 0, ("the stuck worker is told it missed messages", result, published)
    # Its loss, exactly: everything published up to the STOP it read is either
    # received or in its gap reports.
    assert result["received"] + result["missed"] == result["last_seq"]
    pacing = bridge.status()["pacing"]
    assert pacing["stalls"] >= 1, pacing  # the stuck one was found stuck
    print(
        f"\npacing {pacing}\n"
        f"published {published} x {STUCK_PAYLOAD // 1024} KiB in {elapsed:.1f} s, flushed in "
        f"{flushed_in:.1f} s (publisher peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB); "
        f"bridge RSS {start / MiB:.0f} -> peak {watch.peak / MiB:.0f} MiB "
        f"(bound {bound / MiB:.0f} MiB); stuck worker missed {result['missed']}"
    )


@pytest.fixture
def raw_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def control_request(
    context: zmq.Context[zmq.Socket[bytes]], bridge: BridgeProcess, request: bytes
) -> Any:
    """Send one request on a REQ socket; the decoded reply (None: none in 1 s)."""
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{bridge.directory}/{bridge.namespace}/ctl.sock")
        sock.send(request)
        if not sock.poll(1000):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close()


@pytest.mark.timeout(240)
def test_garbage_floods_and_bad_requests_leave_the_bridge_serving(
    bridge_factory: Callable[..., BridgeProcess],
    redis_server: RedisServer,
    raw_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    bridge = bridge_factory(redis_url=redis_server.url)
    directory = str(bridge.directory)
    out = f"{directory}/default/out.sock"
    received: list[Any] = []
    with (
        Bus(dir=directory, worker="listener") as listener,
        Bus(dir=directory, worker="talker") as talker,
    ):
        listener.on("chat")(lambda event: received.append(event.data))
        assert listener.sync(10)
        status = bridge.status()
        limits, baseline_subscriptions = status["limits"], status["subscriptions"]
        redis = redis_server.client()
        assert bridge.process is not None
        start = rss(bridge.process.pid)
        sent = 0

        def talk() -> None:
            """A well-formed exchange: everything sent so far arrives."""
            nonlocal sent
            for _ in range(100):
                talker.publish("chat", sent)
                sent += 1
            wait_until(lambda: len(received) == sent, 10, "the listener hears the talker")
            assert received == list(range(sent))

        with Watch(bridge, status_every=0.1) as watch:
            # 1. Garbage subscription frames of 8 MB: libzmq drops the sender
            #    before storing them (MAXMSGSIZE).
            for _ in range(3):
                garbage = RawSubscriber(out)
                with contextlib.suppress(OSError):  # the bridge hangs up on it
                    garbage.subscribe([os.urandom(8 * 1000 * 1000)])
                talk()
                garbage.close()
            # 2. One socket fills the table, then 1,000 channels and 1,000
            #    prefixes more: refused, within what a socket may hold refused.
            flood = RawSubscriber(out)
            room = limits["max_subscriptions"] - baseline_subscriptions
            flood.subscribe([b"flood.%06d\0" % n for n in range(room + 1000)])
            flood.subscribe([b"prefix.%05d." % n for n in range(1000)])
            expected_refused = 2000
            wait_until(
                lambda: bridge.counters()["refused_subscriptions"] >= expected_refused,
                60,
                "every subscription past the cap refused",
            )
            status = bridge.status()
            assert status["subscriptions"] == limits["max_subscriptions"]
            assert status["patterns"] <= limits["max_patterns"]
            assert "max_subscriptions" in status["last_error"]
            # Redis never got more than the caps from this bridge (plus its own
            # heartbeat channel).
            wait_until(
                lambda: (
                    len(redis.pubsub_channels()) + redis.pubsub_numpat()
                    >= limits["max_subscriptions"]
                ),
                30,
                "the bridge's Redis subscriptions",
            )
            assert redis.pubsub_numpat() <= limits["max_patterns"]
            assert len(redis.pubsub_channels()) <= limits["max_subscriptions"] + 1
            talk()
            assert bridge.counters()["cut_subscribers"] == 0
            # Past the bridge's budget for refused topics libzmq keeps, it cuts
            # the socket, which frees them and its subscriptions.
            with contextlib.suppress(OSError):  # the bridge hangs up on it
                flood.subscribe([b"flood.%06d\0" % n for n in range(100_000, 200_000)])
            wait_until(lambda: bridge.counters()["cut_subscribers"] == 1, 30, "the flood cut")
            flood.close()
            wait_until(
                lambda: bridge.status()["subscriptions"] == baseline_subscriptions,
                60,
                "the flood's subscriptions gone with its socket",
            )
            talk()
            # 3. Malformed control requests of every kind.
            nested = control_request(raw_context, bridge, b"[" * 60_000)
            assert "nests more than" in nested["error"]
            for bad in (b"{" * 30_000 + b"}" * 30_000, b"\xff" * 100, b"[1]", b'{"cmd": 7}'):
                assert "bad request" in control_request(raw_context, bridge, bad)["error"]
            dealer = raw_context.socket(zmq.DEALER)
            dealer.connect(f"ipc://{directory}/default/ctl.sock")
            dealer.send_multipart([b""] * 1000 + [b'{"cmd": "status"}'])  # too many frames
            dealer.send_multipart([b"", b'{"cmd": "ping"}'])
            assert dealer.poll(1000), "the bridge answers after a message of 1,001 frames"
            empty, answer = dealer.recv_multipart()
            assert empty == b"" and json.loads(answer)["ok"] is True
            dealer.close(linger=0)
            too_big = raw_context.socket(zmq.REQ)
            too_big.connect(f"ipc://{directory}/default/ctl.sock")
            too_big.send(b" " * (128 * 1024))  # past MAXMSGSIZE: libzmq drops the sender
            too_big.close(linger=0)
            talk()
            # 4. Memory handed back (the bridge trims its heap every few seconds).
            wait_until(
                lambda: rss(bridge.process.pid) <= start + RECOVERED_WITHIN,  # type: ignore[union-attr]
                30,
                "the bridge's RSS back near where it started",
            )
        assert watch.unanswered == 0
        assert watch.slowest_status < 1.0, watch.slowest_status
        counters = bridge.counters()
        assert counters["rejected_control"] >= 6
        print(
            f"\nbridge RSS {start / MiB:.0f} -> peak {watch.peak / MiB:.0f} -> "
            f"{rss(bridge.process.pid) / MiB:.0f} MiB; slowest status "
            f"{watch.slowest_status * 1000:.0f} ms"
        )


#: What junk from subscribers may add to the bridge: libzmq's queue of what
#: they sent, at most 16 frames of 1 KiB per subscriber each time libzmq looks.
UPFLOOD_BOUND: Final = 48 * MiB


def junk_flood(out: str) -> subprocess.Popen[bytes]:
    """A hostile peer on the subscriber socket (``tests/workers/upflood.py``)."""
    command = [sys.executable, str(WORKERS / "upflood.py"), out]
    return subprocess.Popen(command, stdin=subprocess.PIPE)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdin is not None:
            process.stdin.close()


@pytest.mark.timeout(120)
def test_floods_up_the_subscriber_socket_leave_the_bridge_serving(
    bridge_factory: Callable[..., BridgeProcess], redis_server: RedisServer
) -> None:
    """libzmq keeps two things from subscribers out of the bridge's sight: what
    they send, moved into an unbounded list, and every subscription, refused
    or not, in its trie (about 80 bytes per byte). A low RCVHWM bounds the
    first; cutting the connection that holds refused topics frees the second."""
    bridge = bridge_factory(redis_url=redis_server.url)
    directory = str(bridge.directory)
    out = f"{directory}/default/out.sock"
    received: list[Any] = []
    floods: list[subprocess.Popen[bytes]] = []
    try:
        with (
            Bus(dir=directory, worker="listener") as listener,
            Bus(dir=directory, worker="talker") as talker,
        ):
            listener.on("chat")(lambda event: received.append(event.data))
            assert listener.sync(10)

            def talk() -> None:
                start = len(received)
                for n in range(100):
                    talker.publish("chat", start + n)
                wait_until(lambda: len(received) == start + 100, 20, "the listener hears")
                assert received == list(range(start + 100))

            def counter(name: str) -> int:
                """A bridge counter; 0 while a flood keeps its answer late (CPU)."""
                status = bridge.status(timeout=1.0)
                return 0 if status is None else int(status["counters"][name])

            assert bridge.process is not None
            start = rss(bridge.process.pid)
            # 1. Two peers send frames of 1,000 bytes that are no subscription
            #    (with libzmq's RCVHWM of 1,000 two took the bridge to 1.6 GB in 10 s).
            with Watch(bridge) as watch:
                floods += [junk_flood(out) for _ in range(2)]
                talk()
                wait_until(
                    lambda: counter("rejected_subscriptions") >= 200_000,
                    60,
                    "200,000 junk frames read and rejected",
                )
                stop_all(floods)
            talk()
            assert watch.peak <= start + UPFLOOD_BOUND, (start // MiB, watch.peak // MiB)
            junk_peak = watch.peak
            # 2. One peer sends 20,000 distinct subscriptions of 900 bytes at once:
            #    libzmq stores them (1.4 GB), the bridge refuses them and cuts the
            #    peer past its budget, which frees them.
            rejected = counter("rejected_subscriptions")
            with Watch(bridge) as watch:
                flood = RawSubscriber(out)
                with contextlib.suppress(OSError):  # the bridge hangs up on it
                    flood.subscribe([b"refused.%09d." % n + b"x" * 880 for n in range(20_000)])
                # (At least once: frames read after the cut may name this test's
                # next connection to the bridge, from the same pid.)
                wait_until(lambda: counter("cut_subscribers") >= 1, 60, "the flood cut")
                flood.close()
                talk()
                wait_until(
                    lambda: rss(bridge.process.pid) <= start + RECOVERED_WITHIN,  # type: ignore[union-attr]
                    30,
                    "the bridge's RSS back near where it started",
                )
            assert counter("rejected_subscriptions") > rejected
            assert listener.stats()["gaps"] == 0
            print(
                f"\nbridge RSS {start / MiB:.0f}, junk peak {junk_peak / MiB:.0f}, "
                f"burst peak {watch.peak / MiB:.0f} MiB"
            )
    finally:
        stop_all(floods)


@pytest.mark.timeout(60)
def test_a_worker_past_max_subscriptions_is_told(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(args=("--max-subscriptions", "4", "--max-patterns", "1"))
    with Bus(dir=str(bridge.directory), worker="greedy") as bus:
        # The inbox takes one place: a, b, c fit; d does not.
        for channel in ("a", "b", "c", "d"):
            bus.subscribe(channel)
        assert bus.sync(10)
        core = bus._core  # the client's report, until the public API surfaces it
        wait_until(lambda: core.refused is not None, 10, "the refusal reaches the worker")
        assert "'d'" in str(core.refused) and "max_subscriptions (4)" in str(core.refused)
    assert bridge.counters()["refused_subscriptions"] == 1
    wait_until(lambda: bridge.status()["subscriptions"] == 0, 10, "the first worker gone")
    with Bus(dir=str(bridge.directory), worker="patterns") as bus:
        bus.subscribe("x.*")
        bus.subscribe("y.*")
        assert bus.sync(10)
        core = bus._core
        wait_until(lambda: core.refused is not None, 10, "the refusal reaches the worker")
        assert "'y.'" in str(core.refused) and "max_patterns (1)" in str(core.refused)


FRAME: Final = LOCAL_FRAME_MAX  # the largest frame a subscriber is sent (pieces)
BAD_LIMITS = [
    ({"subscriber_max_bytes": "lots"}, "subscriber_max_bytes", "not a whole number"),
    ({"subscriber_max_bytes": "0"}, "subscriber_max_bytes", "below the minimum"),
    ({"subscriber_max_bytes": str(1001 * FRAME - 1)}, "subscriber_max_bytes", "1000 frames"),
    ({"subscriber_max_bytes": str(1001 * FRAME)}, None, None),  # at the limit
    ({"subscriber_max_bytes": str(11 * FRAME), "subscriber_hwm": "10"}, None, None),
    (
        {"subscriber_max_bytes": str(11 * FRAME - 1), "subscriber_hwm": "10"},
        "subscriber_max_bytes",
        "10 frames",
    ),
    ({"subscriber_max_bytes": "1e9"}, "subscriber_max_bytes", "not a whole number"),
    ({"subscriber_max_bytes": str(16 * MiB)}, "subscriber_max_bytes", "24576 bytes"),
    ({"subscriber_max_bytes": str(24 * MiB)}, None, None),  # 1 MiB messages, in pieces
    # Smaller messages, smaller frames: the floor follows max_message_bytes.
    ({"subscriber_max_bytes": str(1001 * 5120), "max_message_bytes": "1024"}, None, None),
    ({"max_subscriptions": "0"}, "max_subscriptions", "below the minimum of 1"),
    ({"max_subscriptions": "many"}, "max_subscriptions", "not a whole number"),
    ({"max_patterns": "-1"}, "max_patterns", "below the minimum of 0"),
]


@pytest.mark.parametrize(("options", "key", "message"), BAD_LIMITS)
def test_the_memory_options_are_checked(
    options: dict[str, str], key: str | None, message: str | None
) -> None:
    if key is None:  # accepted
        BridgeConfig.from_options(options)
        return
    with pytest.raises(ConfigError, match=message) as info:
        BridgeConfig.from_options(options)
    assert info.value.key == key


def test_the_memory_options_reach_the_bridge_from_the_plugin() -> None:
    config, _ = parse_plugin_options(
        {
            "subscriber_max_bytes": "2147483648",
            "max_subscriptions": "500",
            "max_patterns": "20",
        },
        environ={},
    )
    assert config.subscriber_max_bytes == 2048 * MiB
    assert (config.max_subscriptions, config.max_patterns) == (500, 20)


def test_status_reports_the_limits_and_what_they_cost(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(
        args=(
            "--max-subscriptions", "123",
            "--max-message-bytes", "4096",
            "--subscriber-max-bytes", "8388608",
        )
    )  # fmt: skip
    limits = bridge.status()["limits"]
    frame = 4096 + 4096
    assert limits["max_subscriptions"] == 123
    assert limits["max_patterns"] == 256
    assert limits["subscriber_hwm_frames"] == 8 * MiB // frame - 1 == 1023
    assert limits["per_subscriber_bytes"] == (limits["subscriber_hwm_frames"] + 1) * frame
    assert limits["per_subscriber_bytes"] <= 8 * MiB
    # 256 MiB of 8 KiB frames is more than PULL_HWM frames: the frame limit holds.
    assert limits["publisher_hwm_frames"] == 20_000
    assert limits["per_publisher_bytes"] == 20_001 * frame
    defaults = bridge_factory(host="host-d").status()["limits"]
    # 512 MiB per subscriber keeps its 20,000 frames: larger messages go in pieces.
    assert defaults["subscriber_hwm_frames"] == 20_000
    assert defaults["per_subscriber_bytes"] == 20_001 * LOCAL_FRAME_MAX <= 512 * MiB
    big = 1024 * 1024 + 4096
    assert defaults["publisher_hwm_frames"] == 256 * MiB // big - 1 == 254
    assert defaults["per_publisher_bytes"] == 255 * big <= 256 * MiB


@pytest.mark.timeout(120)
def test_a_worker_that_bursts_and_exits_loses_nothing(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """With a publisher pipe of a few frames, a worker process that publishes a
    burst and exits still delivers everything: its close flushes first."""
    bridge = bridge_factory(
        args=("--publisher-max-bytes", str(MiB), "--max-message-bytes", str(64 * 1024))
    )
    directory = str(bridge.directory)
    total = 100_000
    burst = (
        "from circus_events import Bus\n"
        f"with Bus(dir={directory!r}, worker='burst', codec='raw') as bus:\n"
        f"    for n in range({total}):\n"
        "        bus.publish('burst', b'%d' % n)\n"
    )
    with Bus(dir=directory, worker="reader", codec="raw", queue_size=total + 1) as reader:
        events = reader.subscribe("burst")
        assert reader.sync(10)
        subprocess.run([sys.executable, "-c", burst], check=True, timeout=60)
        got = [events.get(timeout=30).payload for _ in range(total)]
        assert got == [b"%d" % n for n in range(total)]
        assert reader.stats()["missed"] == 0


@pytest.mark.timeout(120)
def test_a_small_publisher_budget_slows_but_never_stalls(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """A publisher pipe of a few frames only slows its worker down: small events
    flat out, then large ones, all arrive, in order, none missed."""
    bridge = bridge_factory(
        args=("--publisher-max-bytes", str(MiB), "--max-message-bytes", str(64 * 1024))
    )
    assert bridge.status()["limits"]["publisher_hwm_frames"] == MiB // (68 * 1024) - 1 == 14
    directory = str(bridge.directory)
    plan = [b"s" * 10] * 50_000 + [b"L" * 60_000] * 1_000
    with (
        Bus(
            dir=directory,
            worker="reader",
            codec="raw",
            queue_size=len(plan) + 1,
            queue_max_bytes=1024**3,  # it reads only once everything is sent
        ) as reader,
        Bus(dir=directory, worker="writer", codec="raw", publish_timeout=30) as writer,
    ):
        events = reader.subscribe("flood")
        assert reader.sync(10)
        for payload in plan:
            writer.publish("flood", payload)
        assert writer.flush(30)
        got = [events.get(timeout=30) for _ in plan]
        assert [event.payload for event in got] == plan
        assert [event.seq for event in got] == list(range(1, len(plan) + 1))
        assert reader.stats()["missed"] == 0


@pytest.mark.timeout(180)
def test_a_stream_backlog_of_large_messages_is_read_in_bounded_replies(
    bridge_factory: Callable[..., BridgeProcess],
    redis_server: RedisServer,
    raw_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """hiredis holds a whole reply: an XREAD of 1,000 entries of 1 MiB is 1 GiB.
    A bridge back from a pause finds 200 messages of 900 KiB (180 MB) waiting,
    and reads them in replies of at most 64 MiB (with COUNT 1000 its RSS rose
    by about 460 MiB, with the bound by about 180: a reply is held as bytes,
    values and frames at once). Its subscriber is a plain SUB socket that only
    counts, so that its speed does not weigh."""
    stream = ("--mode", "stream")
    a = bridge_factory("host-a", redis_url=redis_server.url, args=stream)
    b = bridge_factory("host-b", redis_url=redis_server.url, args=stream)
    assert b.process is not None
    sub = raw_context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, channel_topic("big"))
    sub.connect(f"ipc://{b.directory}/default/out.sock")
    joiner = Reassembler(2 * MiB)
    whole = 0

    def drain() -> bool:
        nonlocal whole
        while sub.poll(0):
            whole += joiner.add(sub.recv()) is not None
        return whole == 200

    redis = redis_server.client()
    with Bus(dir=str(a.directory), host="host-a", worker="writer") as writer:
        wait_until(lambda: b.status()["subscriptions"] >= 1, 10, "host-b's subscriber")
        assert writer.sync(10)
        start = rss(b.process.pid)
        os.kill(b.process.pid, signal.SIGSTOP)
        try:
            for _ in range(200):
                writer.publish("big", "x" * 900 * 1024)
            assert writer.flush(30)
            streams = [key for key in redis.keys("*") if redis.type(key) == b"stream"]
            wait_until(
                lambda: sum(redis.xlen(key) for key in streams) >= 200, 30, "the backlog in Redis"
            )
        finally:
            os.kill(b.process.pid, signal.SIGCONT)
        with Watch(b) as watch:
            wait_until(drain, 60, "the backlog delivered")
        # Redis took the 180 MB more slowly than the writer sent them: its
        # bridge held the writer back rather than drop from its 64 MiB buffer.
        redis_status = a.status()["redis"]
        assert redis_status["dropped"] == 0
    sub.close(linger=0)
    print(
        f"\nbridge RSS {start / MiB:.0f} -> peak {watch.peak / MiB:.0f} MiB; "
        f"the writer's bridge held it back {redis_status['congestions']} times"
    )
    assert watch.peak <= start + 300 * MiB
