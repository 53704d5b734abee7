"""Plans both clients run (pure): ``sync()``, ``flush()``, the wait for send credit.

Theory of operation: a plan is a generator that yields what it needs done
(:data:`NOW`, :class:`AskSync`, :class:`SendMarker`, :class:`AwaitMarker`,
:data:`ASK_CREDIT`, :class:`AwaitCredit`) and gets the result back;
:class:`~circus_events.Bus` runs it with a thread waiting,
:class:`~circus_events.AsyncBus` with ``await``. The rules (what is
repeated, how often, when to give up) are here only.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Final, NamedTuple

from .credit import SendCredit
from .limits import CREDIT_RETRY, FLUSH_RETRY, SYNC_RETRY

__all__ = [
    "ASK_CREDIT",
    "NOW",
    "Action",
    "AskSync",
    "AwaitConfirmed",
    "AwaitCredit",
    "AwaitMarker",
    "Plan",
    "SendMarker",
    "advance",
    "credit_plan",
    "flush_plan",
    "sync_plan",
]

#: The result is the monotonic time.
NOW: Final = "now"
#: Send a credit marker now (``credit``), under the send lock; no result.
ASK_CREDIT: Final = "ask credit"


class AskSync(NamedTuple):
    """Send the sync request ``token`` up the subscription socket, after the
    subscription changes not sent yet (the request covers them). No result."""

    token: bytes


class SendMarker(NamedTuple):
    """Send the flush marker ``token`` after everything published (a held
    batch first), waiting at most ``timeout`` for room; the result is False
    if there was none."""

    token: bytes
    timeout: float


class AwaitMarker(NamedTuple):
    """Wait at most ``timeout`` for the marker ``token`` to come back; the
    result says whether it did."""

    token: bytes
    timeout: float


class AwaitConfirmed(NamedTuple):
    """Wait at most ``timeout`` until the bridge has confirmed everything sent
    (at once if it does not confirm); the result says whether it did."""

    timeout: float


class AwaitCredit(NamedTuple):
    """Wait at most ``timeout`` for a credit marker to come back (or the bus to
    close); no result."""

    timeout: float


Action = str | AskSync | SendMarker | AwaitMarker | AwaitConfirmed | AwaitCredit
Plan = Generator[Action, Any, bool]


def sync_plan(token: bytes, seconds: float) -> Plan:
    """Until the bridge has applied every subscription sent before: the
    request is repeated every SYNC_RETRY (one sent while the socket is
    reconnecting is lost). False if no answer within ``seconds``."""
    deadline = (yield NOW) + seconds
    while True:
        yield AskSync(token)
        remaining = deadline - (yield NOW)
        if (yield AwaitMarker(token, min(SYNC_RETRY, max(remaining, 0.0)))):
            return True
        if remaining <= SYNC_RETRY:
            return False


def flush_plan(sync_token: bytes, token: bytes, seconds: float) -> Plan:
    """Until the bridge has taken everything published before, and (stream
    mode) confirmed that Redis has it. The marker comes back on our inbox: a
    sync first makes sure the bridge knows it. The marker is repeated every
    FLUSH_RETRY (lost if the bridge restarts)."""
    deadline = (yield NOW) + seconds
    if not (yield from sync_plan(sync_token, seconds)):
        return False
    while True:
        remaining = max(deadline - (yield NOW), 0.0)
        if not (yield SendMarker(token, remaining)):
            return False
        if (yield AwaitMarker(token, min(FLUSH_RETRY, remaining))):
            remaining = max(deadline - (yield NOW), 0.0)
            return bool((yield AwaitConfirmed(remaining)))
        if remaining <= FLUSH_RETRY:
            return False


def credit_plan(credit: SendCredit, seconds: float) -> Plan:
    """Until the bridge has read enough of what was sent that ``credit`` is no
    longer exhausted; False after ``seconds``. A marker dies with a bridge
    that dies: one is sent again while the last is FLUSH_RETRY old, and
    one that met a full pipe after CREDIT_RETRY."""
    now = yield NOW
    deadline = now + seconds
    while credit.exhausted:
        if now >= deadline:
            return False
        if now - credit.asked_at >= FLUSH_RETRY:
            yield ASK_CREDIT
        yield AwaitCredit(min(deadline - now, CREDIT_RETRY))
        now = yield NOW
    return True


def advance(plan: Plan, reply: Any) -> Action | bool:
    """The plan's next action, given the result of the last one (None at
    first), or its result (a bool) once it is done."""
    try:
        return plan.send(reply)
    except StopIteration as done:
        return bool(done.value)
