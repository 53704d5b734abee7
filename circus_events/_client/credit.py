"""A byte bound on what a publisher has sent and its bridge has not read (pure).

Theory of operation: libzmq bounds the PUSH pipe to the bridge in frames
(``send_queue``), and a frame may be as large as ``max_message_bytes``, so
frames alone would let a publisher queue gigabytes while its bridge is away.
Every ``limit // 4`` bytes sent, the client follows its frames with a credit
marker: a flush marker to its own inbox whose token carries the count of
bytes sent before it. One PUSH pipe is first in, first out, so when the
marker comes back the bridge has read everything up to that count, or lost
it with a bridge that died: either way it no longer waits in this process.
``publish`` waits (``publish_timeout``) while more than ``limit`` bytes are
unread. The token also carries a random key: a marker another worker sends
to our inbox cannot be mistaken for one of ours.
"""

from __future__ import annotations

import os
import struct
from typing import Final

__all__ = ["CREDIT_PREFIX", "SendCredit"]

#: What starts a credit marker's token (sync and flush tokens are random bytes
#: of another length, see ``driver.MARKER_TOKEN_BYTES``).
CREDIT_PREFIX: Final = b"credit:"
_KEY_BYTES: Final = 8
_COUNT: Final = struct.Struct(">Q")
_TOKEN_BYTES: Final = len(CREDIT_PREFIX) + _KEY_BYTES + _COUNT.size


class SendCredit:
    """Bytes sent towards the bridge, and how many of them it is known to have read."""

    __slots__ = ("_key", "asked_at", "limit", "markers", "next_mark", "read", "sent")

    def __init__(self, limit: int) -> None:
        #: Most unread bytes before publish waits.
        self.limit = limit
        #: Bytes handed to ZeroMQ since this bus (or forked child) began.
        self.sent = 0
        #: Of those, how many the bridge has read (a credit marker came back).
        self.read = 0
        #: When ``sent`` reaches this, a credit marker is due.
        self.next_mark = self._every
        #: When (monotonic) the last marker left: a waiting publish asks
        #: again once it is FLUSH_RETRY old.
        self.asked_at = float("-inf")
        #: Markers made (each is one more message the bridge counts).
        self.markers = 0
        self._key = os.urandom(_KEY_BYTES)

    @property
    def _every(self) -> int:
        return max(self.limit // 4, 1)

    @property
    def unread(self) -> int:
        return self.sent - self.read

    @property
    def exhausted(self) -> bool:
        """True while publish must wait: more than ``limit`` bytes unread."""
        return self.sent - self.read > self.limit

    def marker_token(self, now: float) -> bytes:
        """The token of a marker sent at ``now``, after ``sent`` bytes; the
        next one is due ``limit // 4`` bytes later."""
        self.next_mark = self.sent + self._every
        self.asked_at = now
        self.markers += 1
        return CREDIT_PREFIX + self._key + _COUNT.pack(self.sent)

    def marker_lost(self) -> None:
        """The marker could not be sent (the pipe is full): try after the next frame."""
        self.next_mark = self.sent
        self.asked_at = float("-inf")

    def marker_back(self, token: bytes) -> bool:
        """A marker came back: True if it is one of ours (``read`` may grow)."""
        if len(token) != _TOKEN_BYTES or not token.startswith(CREDIT_PREFIX):
            return False
        if token[len(CREDIT_PREFIX) : -_COUNT.size] != self._key:
            return False
        (count,) = _COUNT.unpack_from(token, len(token) - _COUNT.size)
        if self.read < count <= self.sent:
            self.read = count
        return True
