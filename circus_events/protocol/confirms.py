"""Publisher confirms: what a bridge tells a worker about the worker's messages.

Theory of operation
-------------------
In stream mode a worker keeps every message it sent until its bridge
confirms that Redis has it (the anchor is Kafka's idempotent producer: keep
what the broker has not acknowledged, send it again, and let receivers drop
the repeats by producer id and sequence). Three frames make the exchange,
each an ordinary envelope on a reserved channel:

* ``CONFIRM_CHANNEL``, bridge to one worker's inbox; its payload
  (:func:`encode_confirm`) is a kind byte, the bridge's instance id (8
  random bytes drawn at its start) and, for :data:`CONFIRMED`, entries
  ``(channel key, epoch, seq)``: every message of that worker on that key
  and epoch up to ``seq`` is in Redis. Redis answers a connection's
  ``XADD``\\ s in order and one worker's frames reach the bridge in order, so
  the highest sequence per key is enough: one entry covers a whole run.
* A hello: :data:`HELLO_CONFIRMS` (stream mode) asks the worker to send
  :data:`RESUME_CHANNEL` and then, again, everything not confirmed;
  :data:`HELLO_NO_CONFIRMS` (pub/sub mode) tells it to keep nothing. A bridge
  says hello whenever a worker's inbox subscription reaches it (a new
  worker, or every worker again after the bridge restarted) and when it
  drops a frame from a worker that has not resumed with it.
* ``RESUME_CHANNEL``, worker to its bridge (host scope, to its own inbox):
  "what follows is in order". A bridge in stream mode relays a worker's
  cluster-scope frames only after that worker's resume marker (per worker
  and epoch): frames that were queued towards a dead bridge and reach its
  successor first would overtake the resent ones; they are dropped and come
  again, in order, with the resend.

The channel key is the message's sequence key: the channel, or the
target's inbox channel for a direct message.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from .._exceptions import ProtocolError

__all__ = [
    "CONFIRMED",
    "CONFIRM_CHANNEL",
    "HELLO_CONFIRMS",
    "HELLO_NO_CONFIRMS",
    "INSTANCE_BYTES",
    "RESUME_CHANNEL",
    "Confirm",
    "decode_confirm",
    "encode_confirm",
]

#: Bridge -> worker: a hello or confirmed messages.
CONFIRM_CHANNEL: Final = "@confirm"
#: Worker -> its bridge: resending starts here (its payload: the instance id).
RESUME_CHANNEL: Final = "@resume"
#: Bytes of a bridge's instance id.
INSTANCE_BYTES: Final = 8

#: A bridge that does not confirm (pub/sub mode): keep nothing.
HELLO_NO_CONFIRMS: Final = 0
#: A bridge that confirms (stream mode): resume, then resend what is not confirmed.
HELLO_CONFIRMS: Final = 1
#: Entries follow: these messages are in Redis.
CONFIRMED: Final = 2

_ENTRY: Final = struct.Struct("<QQH")
_KINDS: Final = (HELLO_NO_CONFIRMS, HELLO_CONFIRMS, CONFIRMED)


class Confirm(NamedTuple):
    """A decoded confirm frame's payload."""

    kind: int
    instance: bytes
    #: (channel key, epoch, highest confirmed seq), for CONFIRMED.
    entries: list[tuple[str, int, int]]


def encode_confirm(kind: int, instance: bytes, entries: list[tuple[str, int, int]]) -> bytes:
    """The payload of a confirm frame (the bridge's side)."""
    parts = [bytes((kind,)), instance]
    for key, epoch, seq in entries:
        raw = key.encode("utf-8")
        parts += (_ENTRY.pack(epoch, seq, len(raw)), raw)
    return b"".join(parts)


def decode_confirm(payload: bytes) -> Confirm:
    """Read a confirm payload; :class:`ProtocolError` if it is not one."""
    if len(payload) < 1 + INSTANCE_BYTES or payload[0] not in _KINDS:
        raise ProtocolError("not a confirm payload")
    entries = []
    at = 1 + INSTANCE_BYTES
    end = len(payload)
    while at < end:
        if end - at < _ENTRY.size:
            raise ProtocolError("truncated confirm entry")
        epoch, seq, size = _ENTRY.unpack_from(payload, at)
        at += _ENTRY.size
        if end - at < size:
            raise ProtocolError("truncated confirm key")
        try:
            key = payload[at : at + size].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("confirm key is not UTF-8") from None
        at += size
        entries.append((key, epoch, seq))
    return Confirm(payload[0], payload[1 : 1 + INSTANCE_BYTES], entries)
