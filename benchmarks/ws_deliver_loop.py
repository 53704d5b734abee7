"""The websocket hub's fan-out loop on its own: CPU per socket, send included.

Runs the hub's per-event loop (``_ws_socket.deliver``, the direct-write path)
over ``--sockets`` asyncio transports on Unix socket pairs, one event frame
per socket per round, and reports the best round's thread CPU per socket. A
socket pair's send is cheap (no TCP path, no receiver woken), so this is
about what the hub's own Python costs per socket per event; in
``benchmarks/websocket_fanout.py`` a delivery costs about ten times that,
nearly all of it in the kernel's TCP send (README, "WebSocket hub").
Measured on 2026-12-02 (2 cores, quiet): 1.1-1.3 us per socket.

Usage::

    python benchmarks/ws_deliver_loop.py --sockets 1000 --rounds 60
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

from circus_events._ws_adapters import DirectWriter
from circus_events._ws_socket import Socket, deliver
from circus_events.protocol.wsproto import Connection

FRAME = (
    '{"type":"event","channel":"load.x","data":{"n":1},"id":"1-0",'
    '"origin":"a/w/1","host":"a","time":1.5}'
)


class PairTransport:
    """The hub's Transport, reduced to what ``deliver`` uses: a direct writer."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.direct = DirectWriter(transport, None)


async def measure(sockets: int, rounds: int) -> float:
    """Best round's thread CPU per socket, in microseconds."""
    loop = asyncio.get_running_loop()
    readers: list[socket.socket] = []
    transports: list[asyncio.BaseTransport] = []
    by_id: dict[str, Socket] = {}
    connections: list[Connection] = []
    try:
        for n in range(sockets):
            ours, theirs = socket.socketpair()
            readers.append(theirs)
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
            transports.append(transport)
            connection = Connection(f"s{n}")
            connection.take()  # the welcome frame
            assert isinstance(transport, asyncio.WriteTransport)
            by_id[connection.socket_id] = Socket(connection, PairTransport(transport), None)  # type: ignore[arg-type]
            connections.append(connection)
        frames = [("1-0", "load.x", FRAME)]
        counters = {"frames_direct": 0, "frames_queued": 0, "dropped": 0}
        best = float("inf")
        for _ in range(rounds):
            started = time.thread_time()
            deliver("load.*", frames, connections, by_id, counters, lambda _socket: None)
            best = min(best, time.thread_time() - started)
            for reader in readers:
                reader.recv(65536)
        return best / sockets * 1e6
    finally:
        for opened in transports:
            opened.close()
        for reader in readers:
            reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    per_socket = asyncio.run(measure(args.sockets, args.rounds))
    print(f"{args.sockets:,} sockets: {per_socket:.2f} us per socket per event (best round)")


if __name__ == "__main__":
    main()
