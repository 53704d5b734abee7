"""The bridge's control socket: ``status`` and ``ping`` requests, answered in JSON.

Frames are read one at a time: a message of more than MAX_CONTROL_PARTS
frames is read to its end and dropped (counted), however long, without
keeping its frames; a malformed request gets an error reply and never
stalls the socket.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any, Final

import zmq

from .._exceptions import ProtocolError
from ..protocol import MAX_CONTROL_PARTS, parse_control_request

__all__ = ["CONTROL_BATCH", "ControlPort"]

#: Control messages answered per loop turn.
CONTROL_BATCH: Final = 100


class ControlPort:
    """Reads requests from the control (ROUTER) socket and answers them."""

    def __init__(
        self,
        control: zmq.Socket[bytes],
        status: Callable[[], dict[str, Any]],
        started_at: float,
        counters: dict[str, int],
    ) -> None:
        self._control = control
        self._status = status
        self._started_at = started_at
        self._counters = counters
        #: Frames of the message being read so far (it may span two drains).
        self._parts = 0

    def drain(self) -> bool:
        """Answer up to CONTROL_BATCH requests; True if more may be waiting."""
        control = self._control
        parts: list[bytes] = []
        for _ in range(CONTROL_BATCH * MAX_CONTROL_PARTS):
            try:
                frame = control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return False
            self._parts += 1
            if self._parts <= MAX_CONTROL_PARTS:
                parts.append(frame)
            if control.getsockopt(zmq.RCVMORE):
                continue
            whole, self._parts = self._parts, 0
            if whole > MAX_CONTROL_PARTS or len(parts) < 2:
                # Too long to answer, or nobody to answer to.
                self._counters["rejected_control"] += 1
            else:
                reply = self.answer(parts[-1])
                with contextlib.suppress(zmq.ZMQError):
                    control.send_multipart([*parts[:-1], reply], zmq.NOBLOCK)
            parts = []
        return True

    def answer(self, request: bytes) -> bytes:
        """Answer one control request (JSON ``{"cmd": ...}``); an error reply if bad."""
        try:
            command = parse_control_request(request)
        except ProtocolError as exc:
            self._counters["rejected_control"] += 1
            return json.dumps({"error": f"bad request: {exc}"}).encode()
        if command == "status":
            return json.dumps(self._status()).encode()
        if command == "ping":  # the pid and start tell a restarted bridge (``tail``)
            ping = {"ok": True, "pid": os.getpid(), "started": self._started_at}
            return json.dumps(ping).encode()
        return json.dumps({"error": f"unknown request {command[:60]!r}"}).encode()
