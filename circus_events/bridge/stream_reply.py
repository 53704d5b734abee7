"""Stream mode: the frames in an XREAD reply, one walk for reading and catching up.

The steady read (:mod:`.stream_side`) and the catch-up after a restart
(:mod:`.catchup`) walk the same reply the same way; they differ only in
whether some of the bridge's own entries are delivered too, which the
catch-up says with ``replay_own``. Kept in one loop so a fix to the walk
(malformed entries, cursors, interest) reaches both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .stream_cursor import Interest
from .values import STAMP_OFFSET, ValueCheck

__all__ = ["ReplayOwn", "frames_from_xread"]

#: ``(shard, entry id, value) -> True`` to deliver an entry the bridge wrote
#: itself (checked before :meth:`ValueCheck.admit`, which drops own entries).
ReplayOwn = Callable[[int, bytes, bytes], bool]


def frames_from_xread(
    reply: list[Any],
    *,
    key_index: dict[bytes, int],
    cursors: list[bytes],
    check: ValueCheck,
    interest: Interest,
    replay_own: ReplayOwn | None = None,
) -> tuple[list[bytes], int]:
    """Local frames for the entries local workers want, in order. Advances
    ``cursors`` past every entry read; returns the frames and how many
    entries no local worker wanted. Malformed entries are counted in
    ``check.rejected`` and skipped, never raised."""
    frames: list[bytes] = []
    append = frames.append
    admit = check.admit
    wanted = interest.wanted
    skipped = 0
    for key, entries in reply:
        shard = key_index.get(key)
        if shard is None or not entries:
            continue
        for entry in entries:
            fields = entry[1]
            if fields.__class__ is not list or len(fields) != 2:
                check.rejected += 1
                continue
            channel, value = fields
            if replay_own is not None and replay_own(shard, entry[0], value):
                pass
            elif not admit(value):
                continue
            want = wanted.get(channel)
            if want is None:
                want = interest.wants(channel)
            if not want:
                skipped += 1
                continue
            # Same bytes as frame_from_redis(channel, value)[1], without the tuple.
            append(b"".join((channel, b"\0", value[STAMP_OFFSET:])))
        cursors[shard] = entries[-1][0]
    return frames, skipped
