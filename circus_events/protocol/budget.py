"""Byte budgets enforced with ZeroMQ's message-counting high-water marks.

Theory of operation
-------------------
libzmq bounds a pipe by messages (``SNDHWM``/``RCVHWM``), not bytes. A pipe
whose frames are at most ``max_frame`` bytes holds at most ``hwm`` of them
plus one that its I/O thread is writing out (or, inbound, reading in), so
``(hwm + 1) * max_frame`` bytes: :func:`hwm_for_bytes` picks the largest
``hwm`` that keeps this within a budget.

Why not a mark per frame size class, switched before each frame: a lower
mark set at run time applies at once to every pipe, but libzmq's writer
only learns how far its reader got every "low-water mark" messages, a
number fixed when the pipe was made. Measured with libzmq 4.3.5: lowered
from 1000 to 22 right after 50 frames that the subscriber had all read, a
pipe stayed "full" for good and that healthy subscriber never received
again. The static mark is what is safe.

Small static marks on the subscriber side lose events for healthy but
briefly starved subscribers in bursts (XPUB drops past its mark), so a
subscriber budget must allow at least ``MIN_FRAMES``. On the publisher side
(PULL) a full pipe only slows its worker down, so any mark of at least one
frame is safe while the worker stays connected. What looked like a stall
with small PULL marks is libzmq dropping a departed peer's unread data: a
raw PUSH that sends 100,000 messages and disconnects at once, while its pipe
is full, loses the few hundred the bridge had not read. ``Bus.close()``
flushes (the bridge confirms it has taken everything) before it
disconnects, so a worker loses nothing that way, even with 30 frames
(``test_a_worker_that_bursts_and_exits_loses_nothing``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIN_FRAMES", "hwm_for_bytes", "min_budget", "worst_case"]

#: Fewest frames a byte budget must allow (see the module docstring).
MIN_FRAMES: Final = 1000


def hwm_for_bytes(budget: int, max_frame: int, frame_hwm: int) -> int:
    """The high-water mark, at most ``frame_hwm`` and at least 1 (libzmq reads 0 as
    "no limit"), that keeps a pipe of frames up to ``max_frame`` within ``budget``."""
    return max(1, min(frame_hwm, budget // max_frame - 1))


def min_budget(max_frame: int, frame_hwm: int) -> int:
    """The smallest budget that allows ``min(MIN_FRAMES, frame_hwm)`` frames."""
    return (min(MIN_FRAMES, frame_hwm) + 1) * max_frame


def worst_case(hwm: int, max_frame: int) -> int:
    """Most bytes one pipe can hold: ``hwm`` frames queued and one in flight."""
    return (hwm + 1) * max_frame
