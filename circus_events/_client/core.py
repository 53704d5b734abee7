"""The I/O-free core of a bus: what both clients decide, once.

Theory of operation: a driver (:class:`~circus_events.Bus` on threads,
:class:`~circus_events.AsyncBus` on an event loop) owns the sockets and the
clocks; this core owns every rule. Publishing, the driver asks
:meth:`BusCore.prepare` for a checked, encoded message, then
:meth:`BusCore.place` where it goes (a :class:`Step`: send alone, hold in the
open batch, send the batch first...), and sends the frames the core builds.
Receiving, it hands each frame to :meth:`BusCore.deliver`, which drops
echoes and duplicates, reports gaps, fills the subscription queues within
their bounds and holds live events while history loads; the driver only
calls the handlers it gets back, wakes :attr:`BusCore.woken`, and after each
round of frames calls :meth:`BusCore.settle` and sends
:meth:`BusCore.take_outbox` up the subscription socket.

Nothing here opens a socket or reads a clock, a random source or the
environment: the time (``now`` monotonic, ``wall`` Unix), the epoch and
the history tokens come in as arguments, and the one clock ``max_delay``
needs on every frame (``wall_clock``) is the driver's.
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._config import FRAME_SLACK, MAX_MAX_MESSAGE_BYTES
from .._event import GAP_LATE, GAP_QUEUE_FULL, Event, Gap, RawEvent
from .._exceptions import ArgumentError, BridgeError, ProtocolError
from ..protocol import (
    CONFIRM_CHANNEL,
    CONFIRMED,
    DUPLICATE,
    FLAG_HOST_ONLY,
    FLAG_NOTICE,
    FLAG_REPLAY,
    FLUSH_CHANNEL,
    HISTORY_END_CHANNEL,
    LOCAL_FRAME_MAX,
    REPLAY_TOKEN_BYTES,
    SYNC_CHANNEL,
    Codec,
    Envelope,
    Pattern,
    Reassembler,
    SequenceTracker,
    build_history_request,
    build_pace_ack,
    channel_topic,
    decode_confirm,
    decode_messages,
    inbox_channel,
    inbox_topic,
    is_piece,
    parse_pace_marker,
)
from ..protocol.lease import LEADER_CHANNEL
from .limits import DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_SIZE, HISTORY_RETRY, HISTORY_TIMEOUT
from .publishing import SCOPES, Publisher
from .queues import DropLedger, HistoryLoad, QueueBound, Subscriber

if TYPE_CHECKING:
    from .options import ClientOptions

__all__ = ["SCOPES", "STATS_DOC", "BusCore"]

log = logging.getLogger("circus_events.client")

#: What :meth:`BusCore.stats` returns, in order: both clients' ``stats()``
#: docstrings are this text.
STATS_DOC: Final = """Counters of this bus, since it opened (or since a fork):

        - ``published``: messages this bus sent (or held to send);
        - ``received``: events it took in (each once: duplicates excluded);
        - ``gaps``: holes seen upstream (events the bridges lost or skipped);
        - ``missed``: the events in those holes;
        - ``duplicates``: events received again and dropped;
        - ``undecodable``: frames dropped because they did not decode;
        - ``dropped``: events full subscription queues of this bus dropped
          (each reported to ``on_gap`` as a ``queue_full`` gap);
        - ``unconfirmed``: messages sent that the bridge has not confirmed
          yet (stream mode: kept to send again to a restarted bridge);
        - ``released``: messages let go unconfirmed past the memory bound
          (no longer protected against a bridge crash);
        - ``late``: events that arrived older than ``max_delay`` and were
          dropped unread (each reported to ``on_gap`` as a ``late`` gap).
        """

_RAW: Final = int(Codec.RAW)
#: A pace key's tail after the worker id: the epoch and a number per bus.
_PACE_KEY: Final = struct.Struct("<QI")
_PACE_KEYS: Final = itertools.count()
_ABSENT: Final = object()


def _no_clock() -> float:
    raise RuntimeError("max_delay needs the driver's wall_clock")


class BusCore(Publisher):
    """The I/O-free part of a bus: one per bus, reset in a forked child.

    ``epoch`` (microseconds since the Unix epoch, when this process's
    identity began) numbers this process's messages apart from an earlier
    one with the same worker id.
    """

    def __init__(
        self, options: ClientOptions, on_gap: Callable[[Gap], Any] | None, epoch: int
    ) -> None:
        super().__init__(options)
        self.on_gap = on_gap
        #: Registered subscribers, in order (a dict: removing one is O(1)).
        self.subscribers: dict[Subscriber, None] = {}
        self.topic_refs: dict[bytes, int] = {}
        #: Topics added or removed since the outbox was last taken, each with
        #: whether it was subscribed before: a subscribe and a close in
        #: between send nothing (see :meth:`take_outbox`).
        self._topic_was: dict[bytes, bool] = {}
        #: Ledgers of drops not reported yet (full subscriptions, late events),
        #: and the queue_full drops reported.
        self.dropping: list[DropLedger] = []
        self.dropped = 0
        #: Events older than this (seconds, by ``wall_clock``) are dropped on arrival.
        self.max_delay = options.max_delay
        #: The driver's Unix-time clock (read per frame only with ``max_delay``).
        self.wall_clock: Callable[[], float] = _no_clock
        self.late = DropLedger(None, GAP_LATE, self.dropping)
        self.tracker = SequenceTracker()
        #: Large messages arrive in pieces; at most one is held while joined.
        self.pieces = Reassembler(MAX_MAX_MESSAGE_BYTES + FRAME_SLACK)
        self.received = 0
        self.undecodable = 0
        #: Why the bridge refused one of this bus's subscriptions (its notice), if it did,
        #: and the topics it refused (``circus-events tail`` exits once all are).
        self.refused: str | None = None
        self.refused_topics: set[bytes] = set()
        #: History loads, first one in progress (one at a time per bus).
        self.loads: dict[bytes, HistoryLoad] = {}
        #: Frames the I/O layer must send up the subscription socket, in order.
        self.outbox: list[bytes] = []
        #: History loads the bridge has finished answering, not yet delivered.
        self.finished: list[HistoryLoad] = []
        #: Called with the token of a flush marker that came back (see ``flush_frame``).
        self.on_flush: Callable[[bytes], None] | None = None
        #: Called with a hello's kind and the bridge's instance id; the sending
        #: side then calls :meth:`hello` under its send lock and sends what it says.
        self.on_hello: Callable[[int, bytes], None] | None = None
        #: Called with the payload of each leader message from the bridge.
        self.on_leader: Callable[[bytes], None] | None = None
        #: Subscriptions given events since the driver last woke their readers.
        self.woken: set[Subscriber] = set()
        self.renew(epoch)

    def renew(self, epoch: int) -> None:
        """A new identity for this process: new epoch, fresh sequence numbers."""
        super().renew(epoch)
        self.inbox = inbox_topic(self.options.worker)
        #: Tells this bus's subscription socket apart in the bridge's pace table.
        self.pace_key = self.options.worker.encode() + _PACE_KEY.pack(epoch, next(_PACE_KEYS))
        # A new socket is subscribed to topic_refs as they are: nothing to change.
        self._topic_was = {}

    # -- receiving ----------------------------------------------------------------

    def accept(self, frame: bytes) -> list[Event] | None:
        """Turn a received frame into its events, or None (echo, duplicate, bad)."""
        # Every piece of a large message but its last fills LOCAL_FRAME_MAX
        # exactly: those skip a decode that would fail (a raise costs more).
        if len(frame) == LOCAL_FRAME_MAX and is_piece(frame):
            return self._piece(frame)
        try:
            env, times, bounds = decode_messages(frame)
        except ProtocolError as exc:  # the bridge validated it; count, never crash
            if is_piece(frame):  # a large message, in pieces: off the hot path
                return self._piece(frame)
            clock = parse_pace_marker(frame)
            if clock is not None:  # read up to here: say so (``protocol.pacing``)
                self.outbox.append(build_pace_ack(clock, self.pace_key))
                return None
            self.undecodable += 1
            log.warning("dropped a frame that does not decode: %s", exc)
            return None
        if env.flags & FLAG_NOTICE:
            self._notice(env.channel, frame[bounds[0] :])
            return None
        own = env.epoch == self.epoch and env.origin == self.options.worker
        if own and env.target is None and not self.options.echo:
            return None
        if env.target is not None:
            if env.target != self.options.worker:
                return None
            if env.channel in (FLUSH_CHANNEL, SYNC_CHANNEL):
                if self.on_flush is not None:
                    self.on_flush(frame[bounds[0] :])
                return None
            if env.channel == CONFIRM_CHANNEL:
                self._confirmed(frame[bounds[0] :])
                return None
            if env.channel == LEADER_CHANNEL:
                if self.on_leader is not None:
                    self.on_leader(frame[bounds[0] :])
                return None
            if env.flags & FLAG_REPLAY or env.channel == HISTORY_END_CHANNEL:
                self._history_frame(env._replace(payload=frame[bounds[0] :]))
                return None
            key = inbox_channel(env.target)
        else:
            key = env.channel
        if env.flags & FLAG_HOST_ONLY:
            key += "\0host"
        kind = RawEvent if env.codec == _RAW else Event
        first = env.seq
        if env.messages > 1:
            results = self.tracker.observe_run(env.origin, key, env.epoch, first, env.messages)
            if results is None:  # all new, in order: the common case
                seqs = range(first, first + env.messages)
                events = [
                    kind(env, seq, t, frame[start:end])
                    for seq, t, start, end in zip(seqs, times, bounds, bounds[1:], strict=False)
                ]
                self.received += env.messages
                return events
        else:
            results = [self.tracker.observe(env.origin, key, env.epoch, first)]
        events = []
        for i, missed in enumerate(results):
            if missed == DUPLICATE:
                continue
            if missed:
                self._report_gap(env, missed, first + i)
            events.append(kind(env, first + i, times[i], frame[bounds[i] : bounds[i + 1]]))
        if not events:
            return None
        self.received += len(events)
        return events

    def _piece(self, frame: bytes) -> list[Event] | None:
        """Join a large message's pieces (``protocol.chunks``); its events once whole.

        A broadcast message (the common case) is decoded from its first piece
        and only its payload is joined: one copy of 512 KiB instead of two
        (the whole frame, then the payload sliced out of it). Anything else
        is joined whole and accepted as any frame.
        """
        try:
            parts = self.pieces.take(frame)
        except ProtocolError as exc:
            self.undecodable += 1
            log.warning("dropped a piece of a large message: %s", exc)
            return None
        if parts is None:
            return None
        head = b"".join(parts[:2])  # the topic and the first piece: the whole header
        try:
            env, times, bounds = decode_messages(head)
        except ProtocolError:
            env = None
        if env is None or env.messages > 1 or env.target is not None or env.flags & FLAG_NOTICE:
            return self.accept(b"".join([head, *parts[2:]]))
        return self._large(env, times[0], b"".join([memoryview(head)[bounds[0] :], *parts[2:]]))

    def _large(self, env: Envelope, when: float, payload: bytes) -> list[Event] | None:
        """:meth:`accept`'s path for one broadcast message, given its payload."""
        if env.epoch == self.epoch and env.origin == self.options.worker and not self.options.echo:
            return None
        key = env.channel + "\0host" if env.flags & FLAG_HOST_ONLY else env.channel
        missed = self.tracker.observe(env.origin, key, env.epoch, env.seq)
        if missed == DUPLICATE:
            return None
        if missed:
            self._report_gap(env, missed, env.seq)
        self.received += 1
        return [(RawEvent if env.codec == _RAW else Event)(env, env.seq, when, payload)]

    def _confirmed(self, payload: bytes) -> None:
        """A confirm or a hello from the bridge (see :mod:`.confirms`)."""
        try:
            confirm = decode_confirm(payload)
        except ProtocolError as exc:
            self.undecodable += 1
            log.warning("dropped a confirm that does not decode: %s", exc)
            return
        if confirm.kind == CONFIRMED:
            self.unconfirmed.note(self.epoch, confirm.entries)
        elif self.on_hello is not None:
            self.on_hello(confirm.kind, confirm.instance)
        else:
            self.unconfirmed.hello(confirm.kind, confirm.instance)

    def _notice(self, channel: str, payload: bytes) -> None:
        """The bridge refused a subscription; report it if it is one of ours."""
        topic = channel_topic(channel) if payload[:1] == b"\x01" else channel.encode()
        if topic in self.topic_refs or topic == self.inbox:
            self.refused = payload[1:].decode(errors="replace")
            self.refused_topics.add(topic)
            log.error("circus-events: %s", self.refused)

    def _report_gap(self, env: Envelope, missed: int, seq: int) -> None:
        if self.on_gap is not None:
            self._gap(Gap(env.origin, env.host, env.channel, missed, seq))

    def _gap(self, gap: Gap) -> None:
        if self.on_gap is not None:
            try:
                self.on_gap(gap)
            except Exception:
                log.exception("on_gap callback failed")

    def new_bound(
        self, pattern: Pattern, size: object = None, max_bytes: object = None
    ) -> QueueBound:
        """The :class:`QueueBound` of a new subscription (its own limits, else the bus's)."""
        max_events, limit = self.options.queue_limits(size, max_bytes)
        return QueueBound(pattern.text, max_events, limit, self.dropping)

    def report_drops(self) -> None:
        """Tell ``on_gap`` what full subscription queues dropped (call after each
        round of frames: one gap per subscription and channel, not per event)."""
        dropping, self.dropping[:] = list(self.dropping), []
        for ledger in dropping:
            for gap in ledger.take_gaps():
                if gap.reason == GAP_QUEUE_FULL:
                    self.dropped += gap.missed
                self._gap(gap)

    def deliver(self, frame: bytes) -> tuple[list[Event], list[Subscriber]] | None:
        """Accept ``frame`` and queue its events for the subscriptions that
        match (those to wake go into :attr:`woken`); the events and the
        handlers still to call with each, or None if there are none."""
        events = self.accept(frame)
        if events is None:
            return None
        if self.max_delay is not None:
            events = self._in_time(events, self.wall_clock() - self.max_delay)
            if not events:
                return None
        channel = events[0].channel
        handlers = []
        for subscriber in self.subscribers:
            if subscriber.pattern.matches(channel):
                if subscriber.history is not None:
                    self._hold(subscriber, subscriber.history, events)
                elif subscriber.sink_many is not None:
                    subscriber.sink_many(events, len(frame))
                    if subscriber.wake is not None:
                        self.woken.add(subscriber)
                else:
                    handlers.append(subscriber)
        return (events, handlers) if handlers else None

    def _in_time(self, events: list[Event], oldest: float) -> list[Event]:
        """The events sent at ``oldest`` (Unix time) or later; the others go to
        the ``late`` ledger. A frame's events are in sending order, so the first
        is the oldest (a sender's clock need not agree: any order is counted)."""
        if events[0].time >= oldest:
            return events
        kept: list[Event] = []
        late: list[Event] = []
        for event in events:
            (kept if event.time >= oldest else late).append(event)
        self.late.drop(late[-1], len(late))
        return kept

    def route(self, events: list[Event]) -> list[Subscriber]:
        """The subscribers to hand ``events`` (one channel) to now; those
        loading history hold them."""
        channel = events[0].channel
        ready = []
        for subscriber in self.subscribers:
            if subscriber.pattern.matches(channel):
                if subscriber.history is None:
                    ready.append(subscriber)
                else:
                    self._hold(subscriber, subscriber.history, events)
        return ready

    def _hold(self, subscriber: Subscriber, load: HistoryLoad, events: list[Event]) -> None:
        """Hold live events while history loads, within the subscriber's bounds
        (a load lasts up to HISTORY_TIMEOUT: at full speed, millions of events)."""
        bound = subscriber.bound
        max_events = DEFAULT_QUEUE_SIZE if bound is None else bound.max_events
        max_bytes = DEFAULT_QUEUE_MAX_BYTES if bound is None else bound.max_bytes
        held = load.held
        taken = 0
        for event in events:
            size = len(event.payload)
            if len(held) >= max_events or load.held_bytes + size > max_bytes:
                break
            held.append(event)
            load.held_bytes += size
            taken += 1
        if taken < len(events):
            if bound is not None:
                bound.drop(events[-1], len(events) - taken)
            else:
                self._gap(
                    Gap(
                        events[-1].origin,
                        events[-1].host,
                        events[-1].channel,
                        len(events) - taken,
                        events[-1].seq,
                        subscriber.pattern.text,
                        GAP_QUEUE_FULL,
                    )
                )
                self.dropped += len(events) - taken

    # -- history ----------------------------------------------------------------------

    def add_history(
        self,
        subscriber: Subscriber,
        limit: int | None,
        since_ms: int | None,
        token: bytes,
        now: float,
    ) -> None:
        """Ask the bridge for ``subscriber``'s history (after its subscription
        was sent) at ``now`` (monotonic); ``token`` (REPLAY_TOKEN_BYTES,
        random) names the request."""
        if limit is not None and limit < 0:
            raise ArgumentError("history", "must be a number of events, 0 or more")
        if len(token) != REPLAY_TOKEN_BYTES:
            raise ArgumentError("token", f"must be {REPLAY_TOKEN_BYTES} bytes")
        load = HistoryLoad(subscriber, token, limit, since_ms, now)
        subscriber.history = load
        self.loads[token] = load
        if len(self.loads) == 1:
            self._ask(load, now)

    def _ask(self, load: HistoryLoad, now: float) -> None:
        load.asked_at = now
        self.outbox.append(
            build_history_request(
                self.options.worker,
                load.token,
                load.limit,
                load.since_ms,
                load.subscriber.pattern.text,
            )
        )

    def check_history(self, now: float) -> None:
        """Ask again if the bridge is silent (the request is lost if sent while
        it restarts); give up after HISTORY_TIMEOUT. ``now``: monotonic."""
        load = next(iter(self.loads.values()), None)
        if load is None:
            return
        if load.heard:  # the bridge is answering: do not ask again yet
            load.heard = False
            load.asked_at = now
        if now - load.started > HISTORY_TIMEOUT:
            self._finish(load, BridgeError("the bridge did not answer the history request"), now)
        elif now - load.asked_at > HISTORY_RETRY:
            self._ask(load, now)

    def _history_frame(self, env: Envelope) -> None:
        token, rest = env.payload[:REPLAY_TOKEN_BYTES], env.payload[REPLAY_TOKEN_BYTES:]
        load = self.loads.get(token)
        if load is None or load is not next(iter(self.loads.values())):
            return  # an answer to a request already finished (asked twice)
        load.heard = True
        if env.channel == HISTORY_END_CHANNEL:
            error = BridgeError(rest.decode("utf-8", "replace")) if rest else None
            self._finish(load, error, load.asked_at)
            return
        key = (env.origin, env.epoch, env.channel, env.seq)
        load.replays[key] = Event.single(env._replace(payload=rest, target=None, flags=0))

    def _finish(self, load: HistoryLoad, error: Exception | None, now: float) -> None:
        # The subscriber keeps holding live events until the I/O layer takes
        # this load (take_completed): an event routed in between, later in the
        # same batch, must not overtake the history.
        del self.loads[load.token]
        load.error = error
        self.finished.append(load)
        following = next(iter(self.loads.values()), None)
        if following is not None:
            self._ask(following, now)

    def take_completed(self) -> list[tuple[Subscriber, list[Event]]]:
        """Finished history loads: (subscriber, history then held live events).

        A load that failed gives the subscription its error first (its
        reader raises it once), or is logged for a handler.
        """
        done = []
        for load in self.finished:
            subscriber = load.subscriber
            subscriber.history = None
            history = list(load.replays.values())
            newest: dict[tuple[str, int, str], int] = {}
            for event in history:
                epoch = event.id.epoch
                key = (event.origin, epoch, event.channel)
                newest[key] = max(newest.get(key, 0), event.seq)
                # A live copy still on its way (the bridge reads Redis a little
                # behind the history query) must then count as a duplicate.
                self.tracker.observe(event.origin, event.channel, epoch, event.seq, count=False)
            live = [
                e for e in load.held if e.seq > newest.get((e.origin, e.id.epoch, e.channel), 0)
            ]
            if subscriber not in self.subscribers:
                continue
            if load.error is not None:
                if subscriber.fail is not None:
                    subscriber.fail(load.error)
                else:
                    log.warning("history for %s: %s", subscriber.pattern.text, load.error)
            done.append((subscriber, history + live))
        self.finished = []
        return done

    def take_outbox(self) -> list[bytes]:
        """Frames to send up the subscription socket, in order: the net
        subscription changes first (a request may depend on them), then the
        requests (history, sync)."""
        frames = []
        if self._topic_was:
            topic_refs = self.topic_refs
            for topic, was in self._topic_was.items():
                now = topic in topic_refs
                if now != was:
                    frames.append((b"\x01" if now else b"\x00") + topic)
            self._topic_was = {}
        if self.outbox:
            frames += self.outbox
            self.outbox = []
        return frames

    @property
    def outbox_pending(self) -> bool:
        return bool(self._topic_was or self.outbox)

    # -- subscriptions --------------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        """Register; the ZeroMQ subscription it may need leaves with the outbox."""
        self.subscribers[subscriber] = None
        topic = subscriber.pattern.topic
        count = self.topic_refs.get(topic, 0)
        self.topic_refs[topic] = count + 1
        if count == 0 and topic not in self._topic_was:
            self._topic_was[topic] = False

    def remove(self, subscriber: Subscriber) -> bool:
        """Unregister (False if it was not registered); forget every reference."""
        if self.subscribers.pop(subscriber, _ABSENT) is _ABSENT:
            return False
        self.woken.discard(subscriber)
        if subscriber.history is not None:
            # The next load (if any) is asked as if now: when it was asked
            # for is the nearest time this core knows.
            self._finish(subscriber.history, None, subscriber.history.started)
        topic = subscriber.pattern.topic
        count = self.topic_refs.get(topic, 0) - 1
        if count > 0:
            self.topic_refs[topic] = count
        else:
            self.topic_refs.pop(topic, None)
            if topic not in self._topic_was:
                self._topic_was[topic] = True
        return True

    def settle(self, now: float) -> list[tuple[Subscriber, list[Event]]]:
        """After a round of frames: move history along (ask again, give up),
        report what full queues dropped; the finished loads to hand over
        (:meth:`take_completed`)."""
        done = []
        if self.loads or self.finished:
            self.check_history(now)
            done = self.take_completed()
        if self.dropping:
            self.report_drops()
        return done

    def stats(self) -> dict[str, int]:
        """The counters (see :data:`STATS_DOC`), in that order."""
        return {
            "published": self.published,
            "received": self.received,
            "gaps": self.tracker.gaps,
            "missed": self.tracker.missed,
            "duplicates": self.tracker.duplicates,
            "undecodable": self.undecodable,
            "dropped": self.dropped,
            "unconfirmed": self.unconfirmed.messages,
            "released": self.released,
            "late": self.late.dropped,
        }
