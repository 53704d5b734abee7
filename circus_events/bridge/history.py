"""History replies: what Redis kept, sent to one worker with no silent loss.

Theory of operation
-------------------
A worker that subscribes with ``history=`` asks its bridge, which reads the
entries Redis kept (stream mode, :mod:`.stream_queries`) and sends them to
that worker's inbox, then an end marker.

The bridge's XPUB socket drops what a full subscriber queue cannot take:
right for live traffic (a stuck worker must not stall the others), wrong
for a history reply, a burst of up to ``retention`` entries at one worker:
60,000 events arrived as 53,957, and nothing said so. So a reply is sent
with ``XPUB_NODROP`` on, for its own sends only (:func:`.local.send_unless_full`):
a full queue answers ``EAGAIN`` and the reply waits for the worker to read,
up to :data:`HISTORY_SEND_TIMEOUT`. Whatever a reply cannot carry ends it
with an error that the worker's subscription raises, never in silence: more
than :data:`HISTORY_MAX_BYTES` (the newest that fit are sent), a worker that
does not read in time, or a large frame whose later piece found the queue
full.

At most :data:`MAX_HISTORY_REPLIES` replies are in progress; a request past
that, or one already in progress (a client asks again after 3 s of
silence), is dropped, and the client asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .._exceptions import ChannelError, CircusEventsError, ProtocolError
from ..protocol import (
    FLAG_REPLAY,
    Codec,
    Envelope,
    HistoryRequest,
    Pattern,
    decode_frame,
    encode_frame,
    single_envelopes,
)

if TYPE_CHECKING:
    from .replies import RedisPort

__all__ = [
    "HISTORY_CONNECT_WAIT",
    "HISTORY_MAX_BYTES",
    "HISTORY_SEND_TIMEOUT",
    "MAX_HISTORY_REPLIES",
    "read_reply",
    "replay_frames",
    "send_reply",
]

#: Longest a history request waits for Redis to be connected (a bridge that
#: has just started, or is reconnecting).
HISTORY_CONNECT_WAIT: Final = 5.0
#: Bytes of frames one reply holds at most (read from Redis, then sent).
HISTORY_MAX_BYTES: Final = 64 * 1024 * 1024
#: Longest a reply waits for its worker to make room (the client gives up on
#: its request after 30 s).
HISTORY_SEND_TIMEOUT: Final = 20.0
#: Replies in progress at once.
MAX_HISTORY_REPLIES: Final = 8
#: How often a waiting reply tries again.
_RETRY: Final = 0.002

#: Sends one frame: True sent, False queue full (nothing sent), None lost.
TrySend = Callable[[bytes], "bool | None"]


async def read_reply(
    redis: RedisPort | None, stream_mode: bool, request: HistoryRequest
) -> tuple[list[bytes], str]:
    """The frames of a reply, oldest first, and an error for the end marker ("" if none)."""
    if redis is None:
        return [], "history needs a Redis in stream mode (mode = stream)"
    if stream_mode:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HISTORY_CONNECT_WAIT):
                await redis.connected_event.wait()  # the side connects on its own
    try:
        frames = await redis.history(
            Pattern(request.pattern).matches, request.limit, request.since_ms
        )
    except (CircusEventsError, ChannelError) as exc:
        return [], f"history is not available: {exc}"
    return replay_frames(frames, request)


def replay_frames(frames: list[bytes], request: HistoryRequest) -> tuple[list[bytes], str]:
    """Stored frames (oldest first) as replay frames for ``request``'s worker:
    its events only, the newest ``limit``, at most HISTORY_MAX_BYTES."""
    replayed: list[Envelope] = []
    for frame in frames:
        try:
            env = decode_frame(frame)
        except ProtocolError:
            continue
        if env.target is not None:
            continue  # direct messages are for their worker only, never history
        replayed.extend(single_envelopes(env))
    if request.limit is not None:
        # The stream side counts entries; a batch entry holds several events.
        replayed = replayed[-request.limit :] if request.limit else []
    out: list[bytes] = []
    size = 0
    for env in reversed(replayed):  # the newest that fit
        frame = encode_frame(
            env.channel,
            origin=env.origin.encode(),
            host=env.host.encode(),
            epoch=env.epoch,
            seq=env.seq,
            time=env.time,
            codec=Codec(env.codec),
            payload=request.token + env.payload,
            flags=FLAG_REPLAY,
            target=request.worker,
        )
        size += len(frame)
        if size > HISTORY_MAX_BYTES:
            mib = HISTORY_MAX_BYTES // (1024 * 1024)
            return out[::-1], (
                f"history truncated to the newest {len(out)} events "
                f"(a reply carries at most {mib} MiB)"
            )
        out.append(frame)
    return out[::-1], ""


async def send_reply(
    try_send: TrySend, frames: list[bytes], stopping: asyncio.Event
) -> tuple[int, str]:
    """Send ``frames`` in order, waiting while the worker's queue is full.

    Returns how many were sent whole and an error ("" if every one was).
    """
    timeout = HISTORY_SEND_TIMEOUT
    deadline = time.monotonic() + timeout
    lost = 0
    for index, frame in enumerate(frames):
        while (sent := try_send(frame)) is False:
            if stopping.is_set() or time.monotonic() > deadline:
                return index - lost, (
                    f"history incomplete: the worker read {index - lost} of "
                    f"{len(frames)} events within {timeout:g} s"
                )
            await asyncio.sleep(_RETRY)
        lost += sent is None
    if lost:
        return len(frames) - lost, (
            f"history incomplete: {lost} large events did not fit the worker's queue"
        )
    return len(frames), ""
