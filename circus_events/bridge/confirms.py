"""The bridge's half of publisher confirms: hellos, resume markers, confirms.

Theory of operation
-------------------
(The exchange is described in :mod:`circus_events.protocol.confirms`.) A
:class:`ConfirmDesk` is the bridge's memory of it:

* :meth:`ConfirmDesk.subscribed` sees every subscription frame; a worker's
  inbox subscription (a worker connecting, or every worker reconnecting
  to a restarted bridge) gets a hello with this bridge's instance id.
* :meth:`ConfirmDesk.admit` (stream mode, on the hot path) relays a
  worker's cluster-scope frame only once that worker (and epoch) has sent
  its resume marker; a frame dropped before it is counted and brings that
  worker a hello (at most one per :data:`HELLO_INTERVAL`): the worker
  keeps the frame and sends it again after its marker, in order.
* A frame a worker sends again that this bridge already relayed (a second
  hello made it resend) is dropped, counted in ``resent_repeats``
  (:mod:`circus_events.protocol.relayed`).
* :meth:`ConfirmDesk.acked` gets the envelopes of the frames Redis has
  answered (the outbound queue's tags, in order) and keeps the highest
  sequence per (worker, key, epoch); once per loop turn :meth:`flush` sends
  each worker one confirm frame on its inbox.

Memory: the resumed set is bounded by :data:`MAX_RESUMED` (the oldest is
forgotten; that worker is asked to resume again when it next publishes),
the hello times by :data:`MAX_HELLO_TIMES`, the relayed runs by
:data:`~circus_events.protocol.relayed.MAX_KEYS`; pending confirms live one
loop turn.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from ..protocol import (
    CONFIRM_CHANNEL,
    CONFIRMED,
    FLAG_HOST_ONLY,
    HELLO_CONFIRMS,
    HELLO_NO_CONFIRMS,
    INSTANCE_BYTES,
    RESUME_CHANNEL,
    Envelope,
    encode_confirm,
)
from ..protocol.relayed import Relayed
from ..protocol.topics import INBOX_PREFIX

if TYPE_CHECKING:
    from .catchup import LocalHold
    from .replies import RedisPort, WorkerReplies

__all__ = ["HELLO_INTERVAL", "MAX_CONFIRM_ENTRIES", "MAX_RESUMED", "ConfirmDesk"]

#: A worker that keeps sending before it resumed is asked again this often (s).
HELLO_INTERVAL: Final = 0.5
#: (worker, epoch) pairs remembered as resumed: ~150 bytes each.
MAX_RESUMED: Final = 100_000
#: Workers whose last hello time is remembered.
MAX_HELLO_TIMES: Final = 10_000
#: Entries per confirm frame (each 18 bytes and its key): well under any
#: max_message_bytes.
MAX_CONFIRM_ENTRIES: Final = 256

_INBOX_TOPIC: Final = b"\x01" + INBOX_PREFIX.encode("utf-8")


class ConfirmDesk:
    """Hellos, resume markers and confirms for one bridge's local workers."""

    @classmethod
    def open(
        cls,
        redis: RedisPort | None,
        replies: WorkerReplies,
        loop: asyncio.AbstractEventLoop,
        counters: dict[str, int],
    ) -> ConfirmDesk:
        """A bridge's desk: confirms in stream mode (wired to the Redis side's
        replies), hellos that say "none" in pub/sub mode and single-host."""
        hold = None if redis is None else redis.local_hold  # only stream mode has one
        desk = cls(
            send_direct=replies.send_direct,
            schedule=loop.call_soon,
            confirms=hold is not None,
            counters=counters,
        )
        if redis is not None and hold is not None:
            redis.on_acked(desk.acked, desk.lost)
            desk.hold = hold
        return desk

    def __init__(
        self,
        *,
        send_direct: Callable[[str, str, bytes], None],
        schedule: Callable[[Callable[[], None]], object],
        confirms: bool,
        counters: dict[str, int],
    ) -> None:
        #: This bridge's instance id: a worker seeing a new one resends.
        self.instance = secrets.token_bytes(INSTANCE_BYTES)
        self._send_direct = send_direct
        self._schedule = schedule
        self._kind = HELLO_CONFIRMS if confirms else HELLO_NO_CONFIRMS
        self._hello = encode_confirm(self._kind, self.instance, [])
        #: What the bridge calls on each local frame (stream mode), else None.
        self.gate: Callable[[Envelope], bool] | None = self.admit if confirms else None
        #: Stream mode: local frames held while a restarted bridge catches up.
        self.hold: LocalHold | None = None
        self._resumed: dict[tuple[str, int], None] = {}
        self._relayed = Relayed()
        self._hello_at: dict[str, float] = {}
        #: worker -> {(key, epoch): highest seq in Redis}, until the next flush.
        self._pending: dict[str, dict[tuple[str, int], int]] = {}
        self._flush_scheduled = False
        self._counters = counters
        for name in ("hellos", "resumes", "dropped_unresumed", "resent_repeats", "confirms_sent"):
            counters.setdefault(name, 0)

    # -- hellos and resume markers ---------------------------------------------------

    def subscribed(self, frame: bytes) -> None:
        """A subscription frame from XPUB: a worker's inbox gets a hello."""
        if frame.startswith(_INBOX_TOPIC) and frame.endswith(b"\0"):
            try:
                worker = frame[len(_INBOX_TOPIC) : -1].decode("utf-8")
            except UnicodeDecodeError:
                return  # the interest table refuses it and counts it
            self.hello(worker)

    def hello(self, worker: str) -> None:
        """Tell ``worker`` who we are (and, stream mode, to resume and resend)."""
        hello_at = self._hello_at
        if len(hello_at) >= MAX_HELLO_TIMES:
            hello_at.clear()
        hello_at[worker] = time.monotonic()
        self._counters["hellos"] += 1
        self._send_direct(worker, CONFIRM_CHANNEL, self._hello)

    def admit(self, env: Envelope) -> bool:
        """Whether to relay a local frame (stream mode); takes resume markers."""
        if env.flags & FLAG_HOST_ONLY:
            if env.target is not None and env.channel == RESUME_CHANNEL:
                self._resume(env)
                return False
            return True
        if (env.origin, env.epoch) in self._resumed:
            key = env.channel if env.target is None else INBOX_PREFIX + env.target
            if self._relayed.first_time(env.origin, key, env.epoch, env.seq, env.messages):
                return True
            self._counters["resent_repeats"] += env.messages
            return False
        self._counters["dropped_unresumed"] += env.messages
        last = self._hello_at.get(env.origin)
        if last is None or time.monotonic() - last >= HELLO_INTERVAL:
            self.hello(env.origin)
        return False

    def _resume(self, env: Envelope) -> None:
        if env.target != env.origin:
            return  # only a worker's marker to itself counts
        resumed = self._resumed
        key = (env.origin, env.epoch)
        if key not in resumed:
            if len(resumed) >= MAX_RESUMED:
                del resumed[next(iter(resumed))]
            resumed[key] = None
        self._counters["resumes"] += 1

    # -- confirms ----------------------------------------------------------------------

    def lost(self, env: Envelope) -> None:
        """Redis will never have this frame (dropped or refused): a resend of
        it, should the worker's next hello bring one, is relayed again."""
        key = env.channel if env.target is None else INBOX_PREFIX + env.target
        self._relayed.forget(env.origin, key)

    def acked(self, tags: Iterable[Envelope | None]) -> None:
        """Redis has these frames (the outbound queue's tags, in order)."""
        pending = self._pending
        for env in tags:
            if env is None:
                continue
            worker = env.origin
            entries = pending.get(worker)
            if entries is None:
                entries = pending[worker] = {}
            key = (env.channel if env.target is None else INBOX_PREFIX + env.target, env.epoch)
            last = env.seq + env.messages - 1
            if entries.get(key, 0) < last:
                entries[key] = last
        if pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self._schedule(self.flush)

    def flush(self) -> None:
        """Send each worker the confirms gathered since the last flush."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for worker, entries in pending.items():
            items = [(key, epoch, seq) for (key, epoch), seq in entries.items()]
            for start in range(0, len(items), MAX_CONFIRM_ENTRIES):
                chunk = items[start : start + MAX_CONFIRM_ENTRIES]
                self._send_direct(
                    worker, CONFIRM_CHANNEL, encode_confirm(CONFIRMED, self.instance, chunk)
                )
                self._counters["confirms_sent"] += 1
