"""The ZeroMQ side of a client: its two sockets and what their errors mean.

Both clients open the same sockets with the same options; what differs is
only whether they wait in a thread or on an event loop.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterable
from typing import Any

import zmq

from .._exceptions import BridgeError, BusClosed, CircusEventsError
from ..protocol import PACE_TOPIC
from .limits import PUBLISH_LINGER_MS, RECEIVE_HWM, RECONNECT_IVL_MAX_MS, RECONNECT_IVL_MS
from .options import ClientOptions

__all__ = ["connect_push", "connect_sub", "send_up", "transport_error"]


def connect_push(sock: zmq.Socket[Any], options: ClientOptions) -> None:
    """The publishing socket: queues (bounded) while the bridge is away."""
    sock.setsockopt(zmq.SNDHWM, options.send_queue)
    sock.setsockopt(zmq.LINGER, PUBLISH_LINGER_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.connect(options.paths.endpoint(options.paths.pull))


def connect_sub(sock: zmq.Socket[Any], options: ClientOptions, topics: Iterable[bytes]) -> None:
    """The receiving XSUB socket, subscribed to ``topics`` before it connects.

    XSUB, not SUB: subscriptions are messages we send, so a sync or history
    request can follow them on the same pipe. libzmq re-sends them after
    every reconnect, as for SUB. Every socket also takes the bridge's pace
    markers (``protocol.pacing``): acknowledging them keeps publishers from
    outrunning it.
    """
    sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.send(b"\x01" + PACE_TOPIC)
    for topic in topics:
        sock.send(b"\x01" + topic)
    sock.connect(options.paths.endpoint(options.paths.pub))


def send_up(sock: zmq.Socket[Any], frames: Iterable[bytes]) -> None:
    """Send subscription changes and requests up the XSUB socket, never waiting.

    SNDHWM 0 on XSUB: subscriptions never meet a full pipe; a request sent
    while the bridge is away is lost and asked again.
    """
    for frame in frames:
        with contextlib.suppress(zmq.Again):
            sock.send(frame, zmq.NOBLOCK)


def transport_error(exc: Exception, closed: bool) -> CircusEventsError:
    """What a ZeroMQ error means to a caller of the public API.

    A socket closed or a context terminated under the call (a ``close()`` on
    another thread) is :class:`BusClosed`; anything else is the transport
    failing, a :class:`BridgeError` naming it.
    """
    code = getattr(exc, "errno", None)
    if closed or code in (errno.ENOTSOCK, getattr(zmq, "ETERM", -1)):
        return BusClosed("the bus is closed")
    return BridgeError(f"the connection to the bridge failed: {exc}")
