"""Byte budgets enforced with ZeroMQ's message-counting high-water marks.

Theory of operation
-------------------
libzmq bounds a pipe by messages (``SNDHWM``), not bytes, but a new
``SNDHWM`` applies at once to every existing pipe. The bridge therefore
sorts the frames it sends into size classes (up to 1 KiB, up to 16 KiB: one
client batch, up to the largest frame) and, before a frame of another class
than the last one, sets the high-water mark of that class.

Why that bounds bytes: a frame of class ``k`` is only queued while fewer
than ``hwm[k]`` frames wait in the pipe, and the marks shrink as the
classes grow, so at any time at most ``hwm[k]`` frames of class ``k`` or
larger wait. Summed over the classes, the bytes waiting are at most
``hwm[0]*top[0] + sum(hwm[k] * (top[k] - top[k-1]))`` (:func:`worst_case`).
:func:`size_classes` picks the marks so that this sum, plus one largest
frame that the I/O thread may be writing out, stays within the budget.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["CLASS_TOPS", "SizeClass", "size_classes", "worst_case"]

#: Upper bounds of the smaller size classes: one small event, one client
#: batch (``BATCH_MAX_BYTES``). The last class ends at the largest frame.
CLASS_TOPS: Final = (1024, 16384)


class SizeClass(NamedTuple):
    """Frames of at most ``top`` bytes (and more than the class below) use ``hwm``."""

    top: int
    hwm: int


def size_classes(budget: int, frame_hwm: int, max_frame: int) -> tuple[SizeClass, ...]:
    """The classes, smallest first, for a per-pipe ``budget`` in bytes.

    ``frame_hwm`` caps every mark (the configured frame limit); every mark is
    at least 1 (libzmq reads 0 as "no limit"). One ``max_frame`` of the
    budget is set aside for the frame being written out. The budget is shared
    evenly among the classes, a class capped by ``frame_hwm`` leaving its
    unused share to the larger ones.
    """
    tops = [top for top in CLASS_TOPS if top < max_frame] + [max_frame]
    remaining = budget - max_frame
    classes: list[SizeClass] = []
    below = 0
    hwm = frame_hwm
    for i, top in enumerate(tops):
        share = remaining // (len(tops) - i)
        hwm = max(1, min(hwm, share // (top - below)))
        remaining -= hwm * (top - below)
        classes.append(SizeClass(top, hwm))
        below = top
    return tuple(classes)


def worst_case(classes: tuple[SizeClass, ...]) -> int:
    """Most bytes one pipe can hold with these classes, the frame in flight included."""
    total = below = 0
    for top, hwm in classes:
        total += hwm * (top - below)
        below = top
    return total + below
