"""Large frames cut into pieces on their way to local subscribers, and joined again.

Theory of operation
-------------------
libzmq bounds a subscriber's pipe in frames, not bytes (``protocol.budget``),
so what a stuck subscriber costs the bridge is its high-water mark times the
largest frame. Frames up to :data:`LOCAL_FRAME_MAX` (every single message of
ordinary size and every batch, whose body is at most 16 KiB) go as they are;
a larger one leaves the bridge as consecutive pieces of at most that size::

    topic | NUL | CHUNK_MARK | index (u32) | count (u32) | piece

The topic is repeated in every piece so that ZeroMQ's prefix filter routes
pieces as it routes the frame. The pieces, joined in order after the topic,
are the original frame's bytes after its NUL. ``CHUNK_MARK`` stands where a
frame has its version byte, so a receiver that does not know pieces refuses
them as malformed rather than misreading them.

One socket's pieces arrive in order and never interleave (the bridge writes
all pieces of a frame before the next frame), but a full pipe may drop any
of them: :class:`Reassembler` keeps one frame in progress and drops it when
the sequence breaks. The lost message is then a hole in its (origin,
channel) sequence, reported like any other loss.
"""

from __future__ import annotations

import struct
from typing import Final

from .._exceptions import ProtocolError
from .envelope import split_topic

__all__ = [
    "CHUNK_MARK",
    "LOCAL_FRAME_MAX",
    "Reassembler",
    "is_piece",
    "split_frame",
]

#: The largest frame a local subscriber is sent, pieces included. 24 KiB:
#: above any batch (16 KiB of payloads, up to 4 KiB of names, times and
#: lengths), so only messages larger than that are cut. With the default 20,000
#: frames per subscriber, a stuck one costs at most about 469 MiB.
LOCAL_FRAME_MAX: Final = 24 * 1024
#: The byte after the topic's NUL in a piece (a frame has its version, 1, there).
CHUNK_MARK: Final = 0xC1
_PIECE: Final = struct.Struct("<BII")
_MARK_BYTE: Final = bytes([CHUNK_MARK])


def split_frame(frame: bytes, limit: int = LOCAL_FRAME_MAX) -> list[bytes]:
    """The frame itself if it fits in ``limit`` bytes, else its pieces in order."""
    if len(frame) <= limit:
        return [frame]
    end = split_topic(frame) + 1
    topic = frame[:end]
    room = limit - end - _PIECE.size
    if room <= 0:
        raise ProtocolError(f"a topic of {end - 1} bytes leaves no room in {limit}-byte pieces")
    body = memoryview(frame)[end:]
    count = -(-len(body) // room)
    return [
        topic + _PIECE.pack(CHUNK_MARK, index, count) + body[index * room : (index + 1) * room]
        for index in range(count)
    ]


def is_piece(frame: bytes) -> bool:
    """True if ``frame`` is a piece of a larger frame (see :func:`split_frame`)."""
    end = frame.find(b"\0", 0, 512)
    return end > 0 and frame[end + 1 : end + 2] == _MARK_BYTE


class Reassembler:
    """Joins one subscriber's pieces into frames; at most ``max_bytes`` held."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        #: Frames given up because a piece was missing, malformed or too much.
        self.dropped = 0
        self._topic = b""
        self._pieces: list[memoryview] = []
        self._count = 0
        self._size = 0

    @property
    def pending(self) -> int:
        """Bytes held for the frame in progress."""
        return self._size

    def add(self, piece: bytes) -> bytes | None:
        """Take the next piece: the whole frame once its last piece is in, else None.

        A piece that does not continue the frame in progress drops that frame
        (counted in :attr:`dropped`); a malformed one also raises
        :class:`ProtocolError`.
        """
        parts = self.take(piece)
        return None if parts is None else b"".join(parts)  # one copy of the whole

    def take(self, piece: bytes) -> list[bytes | memoryview] | None:
        """As :meth:`add`, but the whole frame's parts in order, not joined: the
        topic (with its NUL), then each piece's body. A receiver that only
        needs the payload joins that part alone (one copy instead of two)."""
        end = split_topic(piece) + 1
        if len(piece) < end + _PIECE.size:
            self._drop()
            raise ProtocolError("a piece too short for its header")
        mark, index, count = _PIECE.unpack_from(piece, end)
        if mark != CHUNK_MARK or count < 2 or index >= count:
            self._drop()
            raise ProtocolError(f"a piece numbered {index} of {count}")
        topic = piece[:end]
        if index == 0:
            self._drop()
            self._topic, self._count = topic, count
        elif index != len(self._pieces) or count != self._count or topic != self._topic:
            self._drop()
            return None  # the rest of a frame whose start was lost
        body = memoryview(piece)[end + _PIECE.size :]  # never copied before the join
        self._size += len(body)
        if self._size > self.max_bytes:
            self._drop()
            raise ProtocolError(f"pieces of more than {self.max_bytes} bytes")
        self._pieces.append(body)
        if index + 1 < count:
            return None
        parts: list[bytes | memoryview] = [self._topic, *self._pieces]
        self._reset()
        if parts[1][:1] == _MARK_BYTE:
            self.dropped += 1
            raise ProtocolError("pieces that join into another piece")
        return parts

    def _drop(self) -> None:
        if self._pieces:
            self.dropped += 1
        self._reset()

    def _reset(self) -> None:
        self._topic, self._pieces, self._count, self._size = b"", [], 0, 0
