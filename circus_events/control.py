"""The client of a bridge's control socket: one request, one JSON answer.

The bridge binds a ROUTER at ``<dir>/<namespace>/ctl.sock`` and answers
``{"cmd": "status"}`` with its status and ``{"cmd": "ping"}`` with
``{"ok": true, "pid": ..., "started": ...}`` (see ``bridge.control_port``).
:func:`query` is the one client of that protocol: ``circus-events status``,
``tail``, the benchmark harness and the tests use it. It raises
:class:`NoBridgeAnswers` or :class:`BadReply`, both :class:`ControlError`
(in ``_exceptions``).
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import zmq

from ._config import socket_paths
from ._exceptions import BadReply, ControlError, NoBridgeAnswers
from ._sockdir import check_client_dir

__all__ = ["BadReply", "Command", "ControlError", "NoBridgeAnswers", "control_path", "query"]

#: Seconds ``query`` waits for an answer unless told: a running bridge answers in
#: well under a millisecond; a whole second leaves room for a loaded machine.
DEFAULT_TIMEOUT: Final = 1.0

Command = Literal["status", "ping"]


def control_path(directory: str, namespace: str) -> str:
    """The control socket of ``namespace`` under ``directory``."""
    return socket_paths(directory, namespace).control


def query(
    directory: str, namespace: str, cmd: Command = "status", timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Send ``{"cmd": cmd}`` to the bridge of ``namespace`` in ``directory``; its answer.

    Raises :class:`NoBridgeAnswers` when nothing answers within ``timeout``
    seconds and :class:`BadReply` when the answer is not a JSON object or
    carries an ``error``; :class:`UnsafePathError` (a ``ConfigError``) when
    the socket folder belongs to another user, who could answer in the
    bridge's place.
    """
    paths = socket_paths(directory, namespace)
    check_client_dir(paths.directory)
    path = paths.control
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect("ipc://" + path)
        sock.send(json.dumps({"cmd": cmd}).encode())
        if not sock.poll(max(0, int(timeout * 1000))):
            raise NoBridgeAnswers(f"no bridge answers at {path} (is it running?)")
        raw = sock.recv()
    finally:
        sock.close()
        context.term()
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadReply(f"the bridge at {path} answered {raw[:60]!r}: not JSON") from exc
    if not isinstance(reply, dict):
        raise BadReply(f"the bridge at {path} answered {raw[:60]!r}: not a JSON object")
    if "error" in reply:
        raise BadReply(f"the bridge at {path} refused {cmd!r}: {reply['error']}")
    return reply
