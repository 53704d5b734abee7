"""Messages held to leave together, and the named answers of batching (pure).

Theory of operation: a publish in a burst (see :data:`HOT_GAP`) is numbered
and held in the one :class:`OpenBatch` of its bus; the batch leaves as one
frame when it is full, when a message it cannot take needs the socket, or
when it is due (:meth:`BusCore.batch_due`). What the core decides comes back
as a :class:`Fill` (what adding did) or a :class:`Step` (what the driver
sends next), never as a bare code each client reads its own way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from ..protocol import FLAG_HOST_ONLY, Codec
from .limits import BATCH_MAX_COUNT

__all__ = [
    "ADDED",
    "FULL",
    "REFUSED",
    "Fill",
    "KnownChannel",
    "OpenBatch",
    "Prepared",
    "Step",
    "new_tuple",
]


class Fill(enum.IntEnum):
    """What adding a message to the open batch did (false only for REFUSED)."""

    #: Nothing added: the batch cannot take it (another kind, or no room).
    REFUSED = 0
    #: Added; there is room for more.
    ADDED = 1
    #: Added, and there is no room for another of about its size: send the batch.
    FULL = 2


#: The members as module constants: a class attribute lookup per publish
#: cost a few percent of the hot path.
REFUSED: Final = Fill.REFUSED
ADDED: Final = Fill.ADDED
FULL: Final = Fill.FULL


class Step(enum.Enum):
    """What the driver does with a prepared message (:meth:`BusCore.place`)."""

    #: Held in the open batch; it leaves later (full, or due).
    HELD = "held"
    #: Held in a batch it opened: make sure the batch is sent once due.
    OPENED = "opened"
    #: Held, and the batch must leave now (full, or the burst is over):
    #: send it without waiting (if the pipe is full, it leaves once due).
    SEND_BATCH = "send batch"
    #: Not held: send the open batch first (waiting for room), then place again.
    BATCH_FIRST = "batch first"
    #: Send the message alone (``single_frame``), then ``commit`` it.
    SEND_ALONE = "send alone"


class Prepared(NamedTuple):
    """A validated, encoded message that has no sequence number yet."""

    #: What a batch must share: channel, flags, target, codec.
    key: tuple[str, int, str | None, Codec]
    #: The sequence it is numbered in (the channel, the inbox, plus the scope).
    seq_key: str
    payload: bytes
    #: Frame bytes besides the payload.
    overhead: int


_RAW: Final = int(Codec.RAW)

#: Builds a Prepared without its Python-level ``__new__`` (half the cost).
new_tuple: Callable[[type[Prepared], tuple[Any, ...]], Prepared] = tuple.__new__


class KnownChannel:
    """What publishing on a channel needs that does not change between messages."""

    __slots__ = ("cluster_key", "host_key", "host_seq_key", "overhead")

    def __init__(self, channel: str, codec: Codec, overhead: int) -> None:
        self.overhead = overhead
        self.cluster_key = (channel, 0, None, codec)
        self.host_key = (channel, FLAG_HOST_ONLY, None, codec)
        self.host_seq_key = channel + "\0host"


class OpenBatch:
    """Messages held to go out together in one frame (see :data:`HOT_GAP`)."""

    __slots__ = (
        "channel",
        "clock",
        "first_seq",
        "limit",
        "payloads",
        "prepared",
        "raw",
        "scope",
        "size",
        "times",
    )

    def __init__(
        self,
        prepared: Prepared,
        seq: int,
        wall: float,
        opened: float,
        limit: int,
        scope: object,
    ) -> None:
        self.prepared = prepared
        self.channel = prepared.key[0]
        #: What :meth:`BusCore.join` matches: "cluster" or "host" for a plain
        #: publish with the bus's codec, a token no caller passes for anything else.
        self.scope = scope
        #: Raw payloads: bytes join as they are.
        self.raw = prepared.key[3] == _RAW
        self.first_seq = seq
        #: Unix time less monotonic time: a message's time is its publish's
        #: monotonic time plus this (a batch lasts milliseconds; reading the
        #: wall clock again for each message cost a tenth of the hot path).
        self.clock = wall - opened
        self.times = [wall]
        self.payloads = [prepared.payload]
        self.limit = limit
        #: The frame's size as a batch: names and header, count, then 12 bytes
        #: (time and length) plus the payload per message.
        self.size = prepared.overhead + 4 + 12 + len(prepared.payload)

    def add(self, payload: bytes, now: float) -> Fill:
        """Add a numbered message published at ``now`` (monotonic)."""
        payloads = self.payloads
        count = len(payloads)
        size = self.size + 12 + len(payload)
        if size > self.limit or count >= BATCH_MAX_COUNT:
            return REFUSED
        self.size = size
        self.times.append(now + self.clock)
        payloads.append(payload)
        count += 1
        full = count >= BATCH_MAX_COUNT or size * (count + 1) > self.limit * count
        return FULL if full else ADDED

    @property
    def full(self) -> bool:
        count = len(self.payloads)
        return count >= BATCH_MAX_COUNT or self.size * (count + 1) > self.limit * count
