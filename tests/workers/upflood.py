"""Floods a bridge up its subscriber socket with junk, as a hostile local peer would.

Usage: upflood.py OUT_SOCKET, until stdin closes: frames of 1,000 bytes that
are no subscription, as fast as libzmq takes them (an XSUB socket drops what
its full queue cannot take, so the flood goes on until told to stop).
"""

from __future__ import annotations

import os
import sys

import zmq


def main() -> None:
    context = zmq.Context()
    sock = context.socket(zmq.XSUB)
    sock.connect("ipc://" + sys.argv[1])
    junk = b"\x07" + bytes(999)
    stdin = sys.stdin.fileno()
    poller = zmq.Poller()
    poller.register(stdin, zmq.POLLIN)
    while not poller.poll(0) or os.read(stdin, 4096):
        for _ in range(1000):
            sock.send(junk)
    sock.close(0)
    context.term()


if __name__ == "__main__":
    main()
