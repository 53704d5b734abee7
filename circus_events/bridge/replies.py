"""What the bridge itself tells its local workers: sync answers, history
replays, refusals.

Theory of operation
-------------------
Workers ask the bridge through their subscription frames (``SYNC_REQUEST``,
``HISTORY_REQUEST``); the bridge answers on the XPUB socket with frames aimed
at one worker's inbox (``target``) or, for a refused subscription, with a
``FLAG_NOTICE`` frame on the refused topic itself (the bridge cannot tell
which socket sent a subscription). Every answer is numbered in the bridge's
own (origin, epoch) sequence, like any other message.

A sync means "every subscription sent before this is applied", and with
Redis, "other hosts' events reach you too". So a sync is held until Redis has
confirmed this host's subscriptions, at most ``SETTLE_WAIT``; and, while a
new bridge's first attempt to reach Redis is under way, until it ends (a
worker that synced while its bridge was still connecting missed what other
hosts published in between: flaky cross-host tests showed it). When Redis
cannot be reached (that first attempt failed, or a later outage), a sync is
answered at once: events from other hosts cannot reach anyone then, and
waiting would only slow every worker down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from .._exceptions import ProtocolError
from ..protocol import (
    FLAG_HOST_ONLY,
    FLAG_NOTICE,
    HISTORY_END_CHANNEL,
    HISTORY_REQUEST,
    SYNC_CHANNEL,
    SYNC_REQUEST,
    Codec,
    HistoryRequest,
    SubscriptionRefused,
    SubscriptionTopic,
    encode_frame,
    parse_history_request,
    parse_sync_request,
)
from ..protocol.lease import LEADER_REQUEST
from .catchup import LocalHold
from .history import MAX_HISTORY_REPLIES, TrySend, read_reply, send_reply

__all__ = [
    "MAX_DEFERRED_SYNCS",
    "REQUESTS",
    "SETTLE_WAIT",
    "RedisPort",
    "WorkerReplies",
]

#: Longest a sync reply waits for Redis to confirm this host's subscriptions
#: (or, for a bridge that has never reached Redis, to connect).
SETTLE_WAIT: Final = 5.0
#: Distinct sync requests (worker, token) held while Redis settles: each costs
#: a few hundred bytes; past this many a request is dropped and asked again.
MAX_DEFERRED_SYNCS: Final = 10_000


#: First bytes of the requests workers send up their subscription socket.
REQUESTS: Final = frozenset((SYNC_REQUEST, HISTORY_REQUEST, LEADER_REQUEST))


class RedisPort(Protocol):
    """What the bridge needs of a Redis side (``redis_side.RedisSide``,
    ``stream_side.StreamSide``)."""

    def publish(self, frame: bytes, topic_end: int, messages: int = 1, tag: Any = None) -> None: ...
    def defer_flush(self) -> None: ...
    def flush(self) -> None: ...
    def on_acked(
        self, callback: Callable[[deque[Any]], None], lost: Callable[[Any], None]
    ) -> None: ...
    def on_uncongested(self, callback: Callable[[], None]) -> None: ...
    def add_interest(self, topic: SubscriptionTopic) -> None: ...
    def remove_interest(self, topic: SubscriptionTopic) -> None: ...
    def status(self) -> dict[str, Any]: ...
    async def run(self) -> None: ...
    async def close(self) -> None: ...
    async def history(
        self, match: Callable[[str], bool], count: int | None, since_ms: int | None
    ) -> list[bytes]: ...
    def request(self, cmd: bytes) -> asyncio.Future[Any]: ...
    @property
    def connected(self) -> bool: ...
    @property
    def congested(self) -> bool: ...
    @property
    def subscriptions_settled(self) -> bool: ...

    @property
    def local_hold(self) -> LocalHold | None:
        """Stream mode: local frames held while a restarted bridge catches up."""

    #: Set while both Redis connections serve.
    connected_event: asyncio.Event
    #: Set while a sync reply need not wait: settled, or not connected.
    settled_event: asyncio.Event
    #: Set once the first attempt to reach Redis ended, either way.
    first_attempt: asyncio.Event


class WorkerReplies:
    """The bridge's own frames to its workers, numbered in its own sequence."""

    def __init__(
        self,
        *,
        send: Callable[[bytes], object],
        try_send: TrySend,
        redis: RedisPort | None,
        stream_mode: bool,
        origin: bytes,
        counters: dict[str, int],
        stopping: asyncio.Event,
        note_bad_frame: Callable[[Exception], None],
    ) -> None:
        self._send = send
        self._try_send = try_send
        self._redis = redis
        self._stream_mode = stream_mode
        self._origin = origin
        self._counters = counters
        self._stopping = stopping
        self._note_bad_frame = note_bad_frame
        self._epoch = time.time_ns() // 1000
        self._seq = 0
        #: Sync requests waiting for Redis to settle, once each (a client asks
        #: again every 0.2 s while it waits), at most MAX_DEFERRED_SYNCS.
        self._deferred_syncs: dict[tuple[str, bytes], None] = {}
        self._settle_task: asyncio.Task[None] | None = None
        #: History replies in progress, by (worker, token).
        self._history_replies: dict[tuple[str, bytes], asyncio.Task[None]] = {}

    def _frame(self, channel: str, payload: bytes, **extra: Any) -> bytes:
        self._seq += 1
        return encode_frame(
            channel,
            origin=self._origin,
            host=self._origin,
            epoch=self._epoch,
            seq=self._seq,
            time=time.time(),
            codec=Codec.RAW,
            payload=payload,
            **extra,
        )

    #: Where leader requests go (set by the bridge's :class:`.leader.LeaderDesk`).
    on_leader_request: Callable[[bytes], None] | None = None

    def answer(self, frame: bytes) -> None:
        """A request a worker sent up its subscription socket (see REQUESTS)."""
        if frame[:1] == SYNC_REQUEST:
            self.answer_sync(frame)
        elif frame[:1] == HISTORY_REQUEST:
            self.start_history(frame)
        elif self.on_leader_request is not None:
            self.on_leader_request(frame)

    def send_raw(self, frame: bytes) -> None:
        """Send a frame built elsewhere (leader answers) to the local workers."""
        self._send(frame)

    def send_direct(self, worker: str, channel: str, payload: bytes) -> None:
        """A message from the bridge itself to one local worker."""
        self._send(self._frame(channel, payload, target=worker))

    def notice(self, exc: SubscriptionRefused) -> None:
        """Tell a refused topic's subscribers (they hold the topic) why."""
        topic = exc.topic
        payload = (b"\x01" if topic.exact else b"\x00") + str(exc).encode()
        self._send(self._frame(topic.name, payload, flags=FLAG_NOTICE | FLAG_HOST_ONLY))

    # -- sync -----------------------------------------------------------------

    def answer_sync(self, frame: bytes) -> None:
        """Tell a worker that every subscription it sent before this is applied."""
        try:
            worker, token = parse_sync_request(frame)
        except ProtocolError as exc:
            self._counters["rejected_subscriptions"] += 1
            self._note_bad_frame(exc)
            return
        if self._must_wait():
            if len(self._deferred_syncs) < MAX_DEFERRED_SYNCS:  # else it asks again
                self._deferred_syncs[(worker, token)] = None
            if self._settle_task is None:
                self._settle_task = asyncio.get_running_loop().create_task(
                    self._answer_when_settled()
                )
            return
        self.send_direct(worker, SYNC_CHANNEL, token)

    def _must_wait(self) -> bool:
        redis = self._redis
        if redis is None:
            return False
        if redis.connected:
            return not redis.subscriptions_settled
        return not redis.first_attempt.is_set()

    async def _answer_when_settled(self) -> None:
        redis = self._redis
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SETTLE_WAIT):
                    # Re-check on waking: a new subscription may have come since the set.
                    while redis is not None and self._must_wait():
                        if redis.connected:
                            await redis.settled_event.wait()  # Redis confirms asynchronously
                        else:
                            await redis.first_attempt.wait()
        finally:
            self._settle_task = None
            waiting, self._deferred_syncs = self._deferred_syncs, {}
            if not self._stopping.is_set():
                for worker, token in waiting:
                    self.send_direct(worker, SYNC_CHANNEL, token)

    # -- history --------------------------------------------------------------

    def start_history(self, frame: bytes) -> None:
        """A worker subscribed with ``history=``: replay what Redis kept (see .history)."""
        try:
            request = parse_history_request(frame)
        except ProtocolError as exc:
            self._counters["rejected_subscriptions"] += 1
            self._note_bad_frame(exc)
            return
        key = (request.worker, request.token)
        if key in self._history_replies or len(self._history_replies) >= MAX_HISTORY_REPLIES:
            return  # in progress, or too many at once: the client asks again
        task = asyncio.get_running_loop().create_task(self._replay_history(request))
        self._history_replies[key] = task
        task.add_done_callback(lambda _: self._history_replies.pop(key, None))

    async def _replay_history(self, request: HistoryRequest) -> None:
        frames, error = await read_reply(self._redis, self._stream_mode, request)
        if self._stopping.is_set():
            return
        sent, problem = await send_reply(self._try_send, frames, self._stopping)
        self._counters["history_replayed"] += sent
        end = request.token + (error or problem).encode()
        target = request.worker
        await send_reply(
            self._try_send, [self._frame(HISTORY_END_CHANNEL, end, target=target)], self._stopping
        )
