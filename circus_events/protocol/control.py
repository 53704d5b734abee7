"""Control requests (``circus-events status`` and friends) as the bridge reads them.

A request is one JSON object ``{"cmd": "<name>"}`` in the last frame of a
message on the control socket. The control socket is reachable by every
local user allowed on the bus, so a request is checked before it is parsed:
bounded in size, in nesting depth (``json`` recurses once per level and
raises ``RecursionError`` near 1,000), and in shape. Anything else gets an
error reply; nothing a peer sends can raise out of the bridge's loop.
"""

from __future__ import annotations

import json
from typing import Final

from .._exceptions import ProtocolError

__all__ = ["MAX_CONTROL_DEPTH", "MAX_CONTROL_PARTS", "MAX_CONTROL_REQUEST", "parse_control_request"]

#: Longest control request: ``{"cmd": "status"}`` is 17 bytes. Also the
#: control socket's ``MAXMSGSIZE`` (libzmq drops a peer that sends more).
MAX_CONTROL_REQUEST: Final = 65536
#: Most ``[`` and ``{`` a request may hold (a real one has 1).
MAX_CONTROL_DEPTH: Final = 8
#: Most frames of one control message: routing id, empty delimiter, request
#: (REQ and DEALER clients send 2 or 3). Longer messages are dropped.
MAX_CONTROL_PARTS: Final = 4


def parse_control_request(request: bytes) -> str:
    """The command a request names; :class:`ProtocolError` saying why if none."""
    if len(request) > MAX_CONTROL_REQUEST:
        raise ProtocolError(f"request is {len(request)} bytes; the limit is {MAX_CONTROL_REQUEST}")
    if request.count(b"[") + request.count(b"{") > MAX_CONTROL_DEPTH:
        raise ProtocolError(f"request nests more than {MAX_CONTROL_DEPTH} levels")
    try:
        value = json.loads(request)
    except (ValueError, RecursionError):
        raise ProtocolError(f"request is not JSON: {request[:60]!r}") from None
    command = value.get("cmd") if isinstance(value, dict) else None
    if not isinstance(command, str):
        raise ProtocolError(f'request is not {{"cmd": "<name>"}}: {request[:60]!r}')
    return command
