"""The control-protocol client (``circus_events.control.query``) against real sockets.

A real bridge answers status and ping (conftest's ``bridge`` fixture); a
directory with nothing in it, and a ROUTER socket that answers nonsense,
give the two errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from conftest import BridgeProcess

from circus_events._config import BridgeConfig, socket_paths
from circus_events._exceptions import CircusEventsError, ControlError
from circus_events.bridge.local import CONTROL_REPLY_HWM, LocalSockets
from circus_events.control import BadReply, NoBridgeAnswers, control_path, query
from circus_events.plugin import parse_plugin_options


def test_status_and_ping_from_a_running_bridge(bridge: BridgeProcess) -> None:
    status = query(str(bridge.directory), "default", "status", 5.0)
    assert status["host"] == "host-a" and status["namespace"] == "default"
    ping = query(str(bridge.directory), "default", "ping", 5.0)
    assert ping["ok"] is True and ping["pid"] == status["pid"]  # pid, start: a restart shows


def test_a_peer_that_asks_and_never_reads_holds_two_replies_not_a_thousand(
    short_tmp: Path,
) -> None:
    """libzmq's default (1,000 queued replies per peer) let one such peer take a
    bridge to 2.8 GB with 15 MB ``status`` replies; now at most two wait."""
    config = BridgeConfig.from_options({"dir": str(short_tmp)})
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets = LocalSockets(
        context, socket_paths(config.dir, config.namespace),
        max_message_bytes=config.max_message_bytes, subscriber_hwm=config.subscriber_hwm,
        subscriber_max_bytes=config.subscriber_max_bytes,
        publisher_max_bytes=config.publisher_max_bytes,
    )  # fmt: skip
    try:
        assert sockets.control.getsockopt(zmq.SNDHWM) == CONTROL_REPLY_HWM == 2
    finally:
        sockets.close()
        context.term()


def test_no_bridge_answers_within_the_timeout(short_tmp: Path) -> None:
    started = time.monotonic()
    with pytest.raises(NoBridgeAnswers) as info:
        query(str(short_tmp), "default", "status", 0.2)
    assert time.monotonic() - started < 2.0
    assert control_path(str(short_tmp), "default") in str(info.value)
    assert isinstance(info.value, ControlError) and isinstance(info.value, TimeoutError)
    assert isinstance(info.value, CircusEventsError)


@pytest.fixture
def fake_bridge(short_tmp: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A ROUTER on ``ctl.sock`` that answers each request with the next reply in a list."""
    (short_tmp / "default").mkdir()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("ipc://" + control_path(str(short_tmp), "default"))
    replies: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(20):
                *route, _request = router.recv_multipart()
                router.send_multipart([*route, replies.pop(0)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield str(short_tmp), replies
    finally:
        stop.set()
        thread.join(5)
        router.close()
        context.term()


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"error": "unknown request"}', "unknown request"),
    ],
)
def test_a_bad_reply_is_named(
    fake_bridge: tuple[str, list[bytes]], reply: bytes, says: str
) -> None:
    directory, replies = fake_bridge
    replies.append(reply)
    with pytest.raises(BadReply) as info:
        query(directory, "default", "status", 5.0)
    assert says in str(info.value)
    assert isinstance(info.value, ControlError)


def test_the_plugin_takes_every_bridge_option_including_redis_prefix() -> None:
    config, _ = parse_plugin_options({"dir": "/tmp/ce-keys", "redis_prefix": "other"}, {})
    assert config.redis_prefix == "other"
    assert config == BridgeConfig(dir="/tmp/ce-keys", redis_prefix="other")
