"""The floor under websocket fan-out: one ``send()`` per socket per event.

Every system in :mod:`.ws_fanout` writes each event to each socket with at
least one system call, and on loopback that call also runs the receiving
side's TCP path, charged to the sender. This measures that call alone, in
the same run: ``sockets`` loopback connections to a reader process, an
event-sized websocket frame written to each of them ``rounds`` times, and
the sender's CPU per write. No server can deliver an event that arrives on
its own for less, so it bounds what a deliveries-per-CPU-second target can
ask for.
"""

from __future__ import annotations

import resource
import selectors
import socket
import subprocess
import sys
import time
from typing import Final

__all__ = ["EVENT_FRAME_BYTES", "send_floor_us"]

#: About the size of the hub's event frame for the bench's tick
#: (``{"type": "event", "channel": ..., "data": {...}, "id": ..., ...}``).
EVENT_FRAME_BYTES: Final = 180
#: Seconds between rounds: the reader drains, so no write meets a full buffer.
ROUND_PAUSE: Final = 0.005
READ_TIMEOUT: Final = 60.0


def _frame(size: int) -> bytes:
    body = b"x" * (size - 4)
    return b"\x81\x7e" + len(body).to_bytes(2, "big") + body


def send_floor_us(sockets: int = 1000, rounds: int = 50) -> float:
    """Sender CPU microseconds per ``send()`` of one event frame on loopback."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    sockets = max(1, min(sockets, soft - 64))  # the listener's side holds one per socket
    frame = _frame(EVENT_FRAME_BYTES)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(sockets)
        port = listener.getsockname()[1]
        expected = sockets * rounds * len(frame)
        reader = subprocess.Popen(
            [sys.executable, "-m", __name__, str(port), str(sockets), str(expected)]
        )
        try:
            conns = [listener.accept()[0] for _ in range(sockets)]
            for conn in conns:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.process_time()
            for _ in range(rounds):
                for conn in conns:
                    conn.send(frame)
                time.sleep(ROUND_PAUSE)  # pacing the rounds, as events arrive one by one
            cpu = time.process_time() - start  # sleeping costs no CPU
            reader.wait(READ_TIMEOUT)
            for conn in conns:
                conn.close()
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
    return cpu / (sockets * rounds) * 1e6


def _read(port: int, sockets: int, expected: int) -> None:
    """The receiving process: every socket read until every byte is in."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(sockets)]
    selector = selectors.DefaultSelector()
    for conn in conns:
        selector.register(conn, selectors.EVENT_READ)
    got = 0
    deadline = time.monotonic() + READ_TIMEOUT
    while got < expected and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            got += len(key.fileobj.recv(65536))  # type: ignore[union-attr]


if __name__ == "__main__":
    _read(*(int(arg) for arg in sys.argv[1:4]))
