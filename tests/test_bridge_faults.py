"""What a bridge does with bad input, restarts, shutdown and a missing bridge."""

from __future__ import annotations

import os
import queue
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from conftest import BridgeProcess, wait_until

from circus_events import Bus, ChannelError, EncodeError, MessageTooLarge, PublishTimeout


def _push_socket(bridge: BridgeProcess) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(f"ipc://{bridge.directory}/default/in.sock")
    return context, sock


def _round_trip_works(bridge: BridgeProcess) -> bool:
    with Bus(dir=str(bridge.directory), worker="a") as a, Bus(dir=str(bridge.directory)) as b:
        events = b.subscribe("check")
        assert b.sync()
        a.publish("check", "still serving")
        return events.get(timeout=5).data == "still serving"


def test_garbage_on_the_pull_socket_is_counted_and_dropped(bridge: BridgeProcess) -> None:
    rng = random.Random(1234)
    total = 100_000
    context, sock = _push_socket(bridge)

    def all_counted() -> bool:
        c = bridge.counters()
        return c["rejected_malformed"] + c["rejected_oversized"] + c["accepted"] >= total

    try:
        for _ in range(total):
            parts = [rng.randbytes(rng.randrange(0, 120)) for _ in range(rng.randint(1, 3))]
            sock.send_multipart(parts)
        # Connected until counted: a peer that leaves while its pipe into the
        # bridge is full (publisher_max_bytes) loses what the bridge had not
        # read yet, as libzmq drops a departed peer's unread data.
        wait_until(all_counted, 60, "the bridge to count all garbage")
    finally:
        sock.close()
        context.term()
    counters = bridge.counters()
    assert counters["accepted"] == 0
    assert counters["rejected_malformed"] == total
    assert _round_trip_works(bridge)


def test_garbage_on_the_subscription_socket_is_counted_and_dropped(bridge: BridgeProcess) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(f"ipc://{bridge.directory}/default/out.sock")
    bad = [b"\x01\xff\xfe", b"\x02no-nul", b"\x07junk", b"\x01a\x00b\x00", b""]
    try:
        for frame in bad:
            sock.send(frame)
    finally:
        sock.close()
        context.term()
    wait_until(lambda: bridge.counters()["rejected_subscriptions"] >= 4, 10, "rejections")
    assert _round_trip_works(bridge)


def test_oversized_publish_raises_in_the_client_and_bridge_is_unaffected(
    bridge: BridgeProcess,
) -> None:
    with Bus(dir=str(bridge.directory), max_message_bytes=4096) as bus:
        with pytest.raises(MessageTooLarge, match="max_message_bytes is 4096"):
            bus.publish("big", "x" * 5000)
        bus.publish("small", "x" * 100)  # the bus still works
        assert bus.flush()
    # A client that ignores the limit: the bridge refuses the frame itself.
    context, sock = _push_socket(bridge)
    try:
        with Bus(dir=str(bridge.directory), max_message_bytes=4 * 1024 * 1024) as big:
            frame = big._core.encode("big", "x" * (1024 * 1024 + 10), "cluster", wall=0.0)
        sock.send(frame)
    finally:
        sock.close()
        context.term()
    wait_until(lambda: bridge.counters()["rejected_oversized"] == 1, 10, "the rejection")
    assert _round_trip_works(bridge)


@pytest.mark.parametrize(
    "channel",
    ["", "a" * 201, "tab\there", "star*", "q?", "[x]", "@system", "back\\slash", 42],
)
def test_bad_channel_names_raise_a_clear_value_error(
    bridge: BridgeProcess, channel: object
) -> None:
    with Bus(dir=str(bridge.directory)) as bus:
        with pytest.raises(ValueError, match="channel") as raised:
            bus.publish(channel, 1)  # type: ignore[arg-type]
        assert isinstance(raised.value, ChannelError)


def test_unencodable_payload_raises_at_publish(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory)) as bus:
        with pytest.raises(EncodeError, match="JSON"):
            bus.publish("x", object())
        with pytest.raises(ValueError, match="scope"):
            bus.publish("x", 1, scope="galaxy")  # type: ignore[arg-type]


def test_publishing_while_the_bridge_is_down_queues_then_delivers(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(start=False)
    with Bus(dir=str(bridge.directory), worker="early") as bus:
        for n in range(500):
            bus.publish("early", n)  # no bridge yet: queued, no error
        bridge.start()
        assert bus.flush(10)
    assert bridge.counters()["accepted"] == 501  # and the flush marker


def test_a_full_queue_raises_publish_timeout(bridge_factory: Callable[..., BridgeProcess]) -> None:
    bridge = bridge_factory(start=False)
    with Bus(dir=str(bridge.directory), send_queue=50, publish_timeout=0.2) as bus:
        with pytest.raises(PublishTimeout, match="is the bridge running") as raised:
            # The queue counts frames: a burst fills it 256 messages to a batch.
            for n in range(100_000):
                bus.publish("stuck", n)
        assert isinstance(raised.value, TimeoutError)
        bridge.start()
        assert bus.flush(10), "what was queued before the timeout is still delivered"


def test_sigterm_shuts_down_cleanly_and_removes_the_sockets(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory)) as bus:
        for n in range(1000):
            bus.publish("bye", n)
        assert bus.flush()
    assert bridge.terminate() == 0
    leftovers = sorted(p.name for p in (bridge.directory / "default").iterdir())
    # workers.json stays: the next bridge waits for those workers (bridge.rejoin).
    assert leftovers == ["bridge.lock", "workers.json"]


def test_restart_over_stale_sockets_and_refuse_a_second_bridge(
    bridge: BridgeProcess, short_tmp: Path
) -> None:
    bridge.kill()  # SIGKILL leaves its socket files behind
    assert (bridge.directory / "default" / "in.sock").exists()
    bridge.start()
    assert _round_trip_works(bridge)
    second = subprocess.run(
        bridge.command(), capture_output=True, text=True, timeout=30, check=False
    )
    assert second.returncode == 1
    assert "another bridge" in second.stderr and "already serves" in second.stderr
    assert _round_trip_works(bridge), "the first bridge is untouched"


def test_socket_directory_is_private(bridge: BridgeProcess) -> None:
    mode = os.stat(bridge.directory / "default").st_mode & 0o777
    assert mode == 0o700
    for name in ("in.sock", "out.sock", "ctl.sock"):
        assert os.stat(bridge.directory / "default" / name).st_mode & 0o077 == 0


def test_control_socket_survives_garbage(bridge: BridgeProcess) -> None:
    path = str(bridge.directory / "default" / "ctl.sock")
    for payload in (b"\x00" * 1000, b"GET / HTTP/1.1\r\n\r\n", os.urandom(5000)):
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(path)
            raw.sendall(payload)
    assert bridge.status() is not None
    assert _round_trip_works(bridge)


def test_a_forked_child_gets_its_own_sockets_and_identity(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory)) as parent_bus:
        inbox = parent_bus.subscribe("from-child")
        assert parent_bus.sync()
        pid = os.fork()
        if pid == 0:  # the child uses the bus it inherited
            code = 1
            try:
                replies = parent_bus.subscribe("to-child")
                if parent_bus.sync(10):
                    parent_bus.publish(
                        "from-child", {"pid": os.getpid(), "worker": parent_bus.worker}
                    )
                    code = 0 if replies.get(timeout=10).data == "hello child" else 3
            finally:
                os._exit(code)
        event = inbox.get(timeout=10)
        assert event.data["pid"] == pid
        assert event.data["worker"].endswith(f"/{pid}") and event.origin != parent_bus.worker
        parent_bus.publish("to-child", "hello child")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        parent_bus.publish("from-child", "parent still works")  # echo off: not received
        assert parent_bus.flush()
        with pytest.raises(queue.Empty):
            inbox.get(timeout=0.2)


def test_bridge_refuses_a_directory_path_too_long_for_unix_sockets(short_tmp: Path) -> None:
    deep = short_tmp / ("d" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "circus_events", "bridge", "--dir", str(deep)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "dir:" in result.stderr and "too long" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigint_stops_the_bridge_too(bridge: BridgeProcess) -> None:
    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGINT)
    assert bridge.process.wait(15) == 0
    bridge.process = None


def test_sighup_stops_the_bridge_cleanly_and_removes_the_sockets(bridge: BridgeProcess) -> None:
    """A bridge under a terminal that closes gets SIGHUP: a clean stop, not a kill."""
    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGHUP)
    assert bridge.process.wait(15) == 0
    bridge.process = None
    leftovers = sorted(p.name for p in (bridge.directory / "default").iterdir())
    assert leftovers == ["bridge.lock", "workers.json"]
    assert "bridge stopped" in bridge.log.read_text()
