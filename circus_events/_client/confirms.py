"""What a bus sent and its bridge has not confirmed yet (pure).

Theory of operation: every cluster-scope frame that leaves is kept here
(:meth:`Unconfirmed.keep`), under its sequence key, until a confirm from the
bridge says Redis has it (:meth:`Unconfirmed.confirm`: everything on a key
up to a sequence number). A hello from a bridge that confirms (stream mode:
a new bridge, or the same one asking again) gives back every frame still
kept, oldest first, to send again after a resume marker
(:meth:`Unconfirmed.hello`); the receivers drop the repeats by id. A bridge
that does not confirm (pub/sub mode) says so and nothing is kept.

Confirms come in on the receiving side and are applied by whoever sends
(under the client's send lock): :meth:`Unconfirmed.note` only queues them
(one ``deque.append``, safe from another thread); :meth:`Unconfirmed.keep`
and :meth:`Unconfirmed.apply` apply them.

The store is bounded in bytes (``max_bytes``; each frame counts its length
plus :data:`KEPT_FRAME_OVERHEAD`): past the bound the oldest frames are let
go, counted in :attr:`Unconfirmed.released` (messages no longer protected
against a bridge crash; a publisher is never held up by it). See
:mod:`circus_events.protocol.confirms` for the exchange.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ..protocol import HELLO_NO_CONFIRMS

__all__ = ["KEPT_FRAME_OVERHEAD", "Unconfirmed"]

#: What keeping one frame costs besides its bytes (the dict slot, the tuple,
#: the deque entry), counted against ``max_bytes``.
KEPT_FRAME_OVERHEAD: Final = 160


class Unconfirmed:
    """Frames sent and not confirmed, per sequence key, oldest first."""

    __slots__ = (
        "_by_key",
        "_confirmed",
        "_frames",
        "_incoming",
        "_serial",
        "active",
        "instance",
        "messages",
        "nbytes",
    )

    def __init__(self) -> None:
        #: False once a bridge said it does not confirm: keep nothing.
        self.active = True
        #: The instance id of the bridge that said hello last.
        self.instance: bytes | None = None
        #: serial -> (frame, sequence key), in the order sent.
        self._frames: dict[int, tuple[bytes, str]] = {}
        #: sequence key -> (last seq in the frame, serial, messages), oldest first.
        self._by_key: dict[str, deque[tuple[int, int, int]]] = {}
        self._serial = 0
        #: sequence key -> highest seq confirmed (a confirm may overtake the keep).
        self._confirmed: dict[str, int] = {}
        #: Confirms received, not applied yet: (epoch, entries).
        self._incoming: deque[tuple[int, list[tuple[str, int, int]]]] = deque()
        #: Bytes kept (frames plus KEPT_FRAME_OVERHEAD each) and messages kept.
        self.nbytes = 0
        self.messages = 0

    def keep(self, key: str, last_seq: int, messages: int, frame: bytes, max_bytes: int) -> int:
        """Keep a frame that left; past ``max_bytes`` let the oldest go.
        Returns how many messages were let go."""
        if not self.active or last_seq <= self._confirmed.get(key, 0):
            return 0
        self._serial = serial = self._serial + 1
        self._frames[serial] = (frame, key)
        runs = self._by_key.get(key)
        if runs is None:
            runs = self._by_key[key] = deque()
        runs.append((last_seq, serial, messages))
        self.nbytes += len(frame) + KEPT_FRAME_OVERHEAD
        self.messages += messages
        if self._incoming:
            # After keeping the frame: its confirm may have come before it was kept.
            self.apply()
        released = 0
        while self.nbytes > max_bytes:
            # The oldest frame is the oldest of its key's runs.
            serial = next(iter(self._frames))
            frame, key = self._frames.pop(serial)
            runs = self._by_key[key]
            count = runs.popleft()[2]
            if not runs:
                del self._by_key[key]
            self.nbytes -= len(frame) + KEPT_FRAME_OVERHEAD
            self.messages -= count
            released += count
        return released

    def note(self, epoch: int, entries: list[tuple[str, int, int]]) -> None:
        """Confirms received for ``epoch`` (any thread): applied by the sender."""
        self._incoming.append((epoch, entries))

    def apply(self) -> None:
        """Apply the confirms noted so far (the sending side)."""
        incoming = self._incoming
        while True:
            try:
                epoch, entries = incoming.popleft()
            except IndexError:
                return
            self.confirm(epoch, entries)

    def confirm(self, epoch: int, entries: list[tuple[str, int, int]]) -> None:
        """Forget what ``entries`` (key, epoch, highest seq) confirm, for ``epoch``."""
        frames = self._frames
        for key, entry_epoch, seq in entries:
            if entry_epoch != epoch:
                continue
            if seq > self._confirmed.get(key, 0):
                self._confirmed[key] = seq
            runs = self._by_key.get(key)
            if runs is None:
                continue
            while runs and runs[0][0] <= seq:
                _, serial, count = runs.popleft()
                frame = frames.pop(serial)[0]
                self.nbytes -= len(frame) + KEPT_FRAME_OVERHEAD
                self.messages -= count
            if not runs:
                del self._by_key[key]

    def hello(self, kind: int, instance: bytes) -> list[bytes] | None:
        """A bridge said hello (the sending side): the frames to send again
        after a resume marker, oldest first; None if it does not confirm
        (then everything is forgotten)."""
        self.apply()
        self.instance = instance
        if kind == HELLO_NO_CONFIRMS:
            self.active = False
            self.clear()
            return None
        self.active = True
        return [frame for frame, _ in self._frames.values()]

    def clear(self) -> None:
        """Forget everything kept."""
        self._frames = {}
        self._by_key = {}
        self._confirmed = {}
        self.nbytes = 0
        self.messages = 0
