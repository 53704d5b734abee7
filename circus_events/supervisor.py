"""supervisord eventlistener: forwards PROCESS_STATE events to the bus.

Run as ``[eventlistener:circus-events]`` with ``command = circus-events
supervisor-listener`` and ``events = PROCESS_STATE``. supervisord speaks to a
listener over its stdin/stdout, so this module writes nothing to stdout but
the protocol (``READY``, ``RESULT 2\\nOK``); diagnostics go to stderr. Each
event is answered OK at once: publishing only queues towards the local
bridge, and an event that cannot be queued is logged and dropped rather
than holding up supervisord.

Application messages never travel over supervisor's PROCESS_COMMUNICATION
capture mode: it loses events past ``buffer_size``.
"""

from __future__ import annotations

import logging
from typing import IO, Any, Final, Protocol

from ._exceptions import CircusEventsError

__all__ = ["parse_header", "parse_payload", "run_listener", "state_channel"]

log = logging.getLogger("circus_events.supervisor")

STATE_PREFIX: Final = "PROCESS_STATE_"
#: An event header is one short line; anything longer is not supervisord.
MAX_HEADER: Final = 4096


class Publisher(Protocol):
    def publish(self, channel: str, data: Any) -> None: ...


def parse_header(line: str) -> dict[str, str]:
    """``ver:3.0 server:supervisor ... len:84`` as a mapping."""
    fields = dict(token.split(":", 1) for token in line.split() if ":" in token)
    length = fields.get("len", "")
    if "eventname" not in fields or not (length.isascii() and length.isdigit()):
        raise ValueError(f"not an eventlistener header: {line[:100]!r}")
    return fields


def parse_payload(payload: str) -> dict[str, str]:
    """The first line of a payload: ``processname:x groupname:y from_state:Z pid:1``."""
    first = payload.split("\n", 1)[0]
    return dict(token.split(":", 1) for token in first.split() if ":" in token)


def state_channel(eventname: str, fields: dict[str, str]) -> str | None:
    """``supervisor.<program>.<state>`` for a PROCESS_STATE event, else None."""
    if not eventname.startswith(STATE_PREFIX):
        return None
    program = fields.get("groupname") or fields.get("processname")
    if not program:
        return None
    state = eventname[len(STATE_PREFIX) :].lower()
    return f"supervisor.{_channel_safe(program)}.{state}"


def _channel_safe(name: str) -> str:
    return "".join(c if c.isprintable() and c not in "*?[]\\" else "_" for c in name)


def run_listener(stdin: IO[str], stdout: IO[str], bus: Publisher) -> None:
    """Serve supervisord until it closes our stdin."""
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline(MAX_HEADER)
        if not line:
            return
        if not line.endswith("\n") and len(line) == MAX_HEADER:
            while (rest := stdin.readline(MAX_HEADER)) and not rest.endswith("\n"):
                pass  # one overlong line is one bad header, not several
            log.error("not an eventlistener header: a line over %d characters", MAX_HEADER)
            continue
        try:
            header = parse_header(line)
        except ValueError as exc:
            log.error("%s", exc)
            continue
        payload = stdin.read(int(header["len"]))
        stdout.write("RESULT 2\nOK")
        stdout.flush()
        fields = parse_payload(payload)
        channel = state_channel(header["eventname"], fields)
        if channel is None:
            continue
        data: dict[str, Any] = {
            "program": fields.get("groupname"),
            "process": fields.get("processname"),
            "from_state": fields.get("from_state"),
            "state": header["eventname"][len(STATE_PREFIX) :],
        }
        if fields.get("pid", "").isdigit():
            data["pid"] = int(fields["pid"])
        if fields.get("expected", "").isdigit():
            data["expected"] = fields["expected"] == "1"
        try:
            bus.publish(channel, data)
        except (CircusEventsError, ValueError) as exc:
            log.error("dropped %s: %s", channel, exc)
