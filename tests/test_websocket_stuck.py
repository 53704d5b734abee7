"""Browsers that stop reading, under uvicorn: the hub cuts their TCP connection
(file descriptor and kernel buffers) instead of waiting forever for it to drain."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wait_until
from test_websocket import Cluster, cluster_factory, server_stats

from circus_events import AsyncBus

__all__ = ["cluster_factory"]  # the fixture, shared with test_websocket


def masked_text(text: str) -> bytes:
    """One masked client text frame (what a browser sends)."""
    payload = text.encode()
    mask = os.urandom(4)
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + body


def stuck_client(port: int, path: str) -> socket.socket:
    """A websocket client that subscribes to ``flood*`` and then never reads (nor pongs)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += raw.recv(1)
    assert b" 101 " in answer
    raw.sendall(masked_text(json.dumps({"type": "subscribe", "pattern": "flood*"})))
    return raw


def server_socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of one TCP connection, if the kernel has it."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == server_port and (
                    int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    return fields[9]
    return None


def holds_socket(pid: int, inode: str) -> bool:
    """True while process ``pid`` has a file descriptor on socket ``inode``."""
    fds = Path(f"/proc/{pid}/fd")
    target = f"socket:[{inode}]"
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except FileNotFoundError:
            continue
    return False


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("how", ["1013", "ping-timeout"])
def test_uvicorn_cuts_a_socket_that_stopped_reading(
    cluster_factory: Callable[..., Cluster], how: str
) -> None:
    """1013 (too slow) or no pong: the server's file descriptor goes within seconds,
    although the peer's zero window would hold uvicorn's graceful close forever."""
    cluster = cluster_factory(per_host=0)
    ping = 0.5 if how == "ping-timeout" else 20.0
    close_bytes = 400_000 if how == "1013" else 10**9
    server = cluster.start_server(
        "host-a", "asgi", "host-a/ws-stuck", ping=ping, queue_bytes=100_000,
        close_bytes=close_bytes,
    )  # fmt: skip
    pid = server.process.process.pid
    raw = stuck_client(server.port, "/events?token=alice")
    try:
        client_port = raw.getsockname()[1]
        inode = wait_until(
            lambda: server_socket_inode(server.port, client_port), 10, "the server's socket"
        )
        assert holds_socket(pid, inode)

        async def flood() -> dict[str, int]:
            async with AsyncBus(dir=str(server.bridge.directory), worker="flooder") as bus:
                payload = "x" * 2000
                n = 0
                # Enough to fill every buffer on the way (1013: and the send queue).
                while holds_socket(pid, inode) and n < 20_000:
                    await bus.publish("flood", {"i": n, "pad": payload})
                    n += 1
                    if n % 100 == 0:
                        await asyncio.sleep(0.01)  # publishing rate, not synchronisation
                stats: dict[str, int] = await server_stats(bus, server.worker)
                return stats

        stats = asyncio.run(flood())
        # Two ping intervals, half an interval to notice, CLOSE_TIMEOUT, margin.
        wait_until(lambda: not holds_socket(pid, inode), 10, "the server to let go of the socket")
        if how == "1013":
            assert stats["closed_slow"] == 1
        assert asyncio.run(_connections(server.bridge.directory, server.worker)) == 0
    finally:
        raw.close()


async def _connections(directory: Path, worker: str) -> int:
    async with AsyncBus(dir=str(directory), worker="watcher") as bus:
        return int((await server_stats(bus, worker))["connections"])
