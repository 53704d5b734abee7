"""The bridge: one per host and namespace, between local workers and Redis.

Theory of operation
-------------------
Workers PUSH frames to the bridge's PULL socket; the bridge checks each one
(size, envelope), sends it to its XPUB socket, from which every local
subscriber receives what it subscribed to, and hands it to the Redis side
unless it is host-scoped. Frames from other hosts come back from the Redis
side and go to XPUB the same way.

The XPUB socket also tells the bridge every subscription its workers make
or drop (verboser mode); the :class:`InterestTable` turns those into the
Redis subscriptions the host needs and into the list of present workers.

All sockets are serviced from one asyncio loop without per-message futures:
the ZeroMQ file descriptors wake the loop, and each wake drains every ready
socket in batches (``BATCH``) so a flood on one cannot starve the others.
Nothing a peer sends can stop the loop: a bad frame is counted and dropped.
A starting bridge holds local delivery until its workers are back (:mod:`.rejoin`).

Memory is bounded in bytes (see the README's "Memory" section): per
subscriber by a high-water mark derived from ``subscriber_max_bytes``
(``protocol.budget``), per publisher by one derived from
``publisher_max_bytes`` (a full pipe slows its worker down); subscription
and control frames by ``MAXMSGSIZE``; the subscriptions by
:class:`InterestTable`'s caps, and those refused, which libzmq keeps, by
cutting who holds the most (:mod:`.holders`). What libzmq frees (a stuck subscriber's
queue, a departed worker's subscriptions) is handed back to the system now
and then (:func:`trim_heap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

from .._config import BridgeConfig
from .._exceptions import ProtocolError
from .._version import __version__
from ..protocol import (
    DUPLICATE,
    FLAG_HOST_ONLY,
    LOCAL_FRAME_MAX,
    PACE_ACK,
    PACE_TOPIC,
    InterestTable,
    SequenceTracker,
    SubscriptionRefused,
    check_frame,
    inbox_channel,
)
from .backlog import BacklogWatch, sent_hook, watch_subscribers
from .confirms import ConfirmDesk
from .control_port import ControlPort
from .heap import settle_heap, trim_heap
from .holders import RefusalHolders
from .leader import LeaderDesk
from .local import POLLIN as _POLLIN
from .local import (
    LocalSockets,
    discard_rest,
    memory_limits,
    send_local,
    send_pieces,
    send_unless_full,
)
from .local import socket_events as _events
from .local import socket_fd as _fd
from .pacing import Pacer
from .rejoin import LocalHold, start_hold
from .replies import REQUESTS, RedisPort, WorkerReplies

__all__ = ["BATCH", "Bridge", "run_bridge"]

log = logging.getLogger("circus_events.bridge")

#: Frames handled per socket per loop turn before the others get a turn.
BATCH: Final = 2000
#: Each stops the bridge cleanly (SIGHUP: its terminal closed).
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: ... and bytes: 2,000 frames of 1 MiB would hold the loop for a second
#: (``status`` unanswered); 8 MiB is a few milliseconds of copying.
BATCH_BYTES: Final = 8 * 1024 * 1024
#: How often memory that libzmq and Python freed is handed back to the system
#: (glibc keeps it otherwise: 100k subscriptions left 745 MiB resident after
#: their socket went away, 17 MiB once trimmed). Only after something was
#: freed: a departed subscription, or a large frame.
TRIM_INTERVAL: Final = 5.0
#: A frame this large marks the heap for a trim (see TRIM_INTERVAL).
TRIM_FRAME_BYTES: Final = 65536


class Bridge:
    """The per-host bridge. ``await bridge.run()`` serves until :meth:`stop`."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.interest = InterestTable(config.max_subscriptions, config.max_patterns)
        self.tracker = SequenceTracker()
        self.counters: dict[str, int] = {
            "accepted": 0,
            # Frames the accepted messages came in (a burst travels in batches).
            "accepted_frames": 0,
            "delivered": 0,
            "from_redis": 0,
            "rejected_malformed": 0,
            "rejected_oversized": 0,
            "rejected_subscriptions": 0,
            "refused_subscriptions": 0,
            "rejected_control": 0,
            "duplicates": 0,
            "foreign_host": 0,
            "history_replayed": 0,
            "cut_stuck_subscribers": 0,  # see .backlog
        }
        self._warned_workers: set[str] = set()
        self.started_at = time.time()
        self.last_error: str | None = None
        self._stopping = asyncio.Event()
        #: Set once the sockets are bound and the bridge serves.
        self.ready = asyncio.Event()
        self._sockets: LocalSockets | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._redis: RedisPort | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._service_scheduled = False
        self._replies: WorkerReplies | None = None
        self._leaders = LeaderDesk(self)
        self._trim_due = False
        self._local_send: Callable[..., Any] = lambda frame, flags=0: None  # XPUB, or the hold
        self._hold: LocalHold | None = None
        self._desk: ConfirmDesk | None = None  # publisher confirms (see .confirms)
        self._pacer: Pacer | None = None  # backpressure from subscribers (see .pacing)
        self._holders = RefusalHolders(self.counters)  # refused topics libzmq keeps
        self._backlog: BacklogWatch | None = None  # stuck subscribers, together (.backlog)
        self._sent: Callable[[int], None] = sent_hook()  # bytes sent to local subscribers
        self._control: ControlPort | None = None  # status and ping requests

    # -- lifecycle ------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Bind, serve until stopped (SIGTERM/SIGINT/SIGHUP or :meth:`stop`), then shut down."""
        self._loop = asyncio.get_running_loop()
        self._context = zmq.Context()
        try:
            self._sockets = LocalSockets.for_config(self._context, self.config)
        except BaseException:
            # destroy, not term: term waits forever for a socket that a failed
            # setup left open (the hang seen with an out-of-range subscriber_hwm).
            self._context.destroy(linger=0)
            raise
        if install_signal_handlers:
            for signum in STOP_SIGNALS:
                self._loop.add_signal_handler(signum, self.stop)
        redis_task: asyncio.Task[None] | None = None
        trim_task = asyncio.create_task(self._trim_now_and_then(), name="circus-events-trim")
        if self.config.redis_url:
            self._redis = self._make_redis_side()
            redis_task = asyncio.create_task(self._redis.run(), name="circus-events-redis")
            self._redis.on_uncongested(self._schedule_service)
        xpub = self._sockets.xpub
        control = self._sockets.control
        self._control = ControlPort(control, self.status, self.started_at, self.counters)
        use = functools.partial(setattr, self, "_local_send")  # where frames for workers go
        self._hold = start_hold(self.config, xpub, self._loop, self.interest.workers, use)
        self._pacer, self._backlog, self._sent = watch_subscribers(
            self.config, self._loop, xpub, self._hold, self.counters, self._schedule_service
        )
        self._replies = WorkerReplies(
            send=lambda frame: send_local(xpub.send, frame),
            try_send=lambda frame: send_unless_full(xpub, frame),
            redis=self._redis,
            stream_mode=self.config.mode == "stream",
            origin=self.config.host.encode("utf-8"),
            counters=self.counters,
            stopping=self._stopping,
            note_bad_frame=self._note_bad_frame,
        )
        self._desk = ConfirmDesk.open(self._redis, self._replies, self._loop, self.counters)
        self._leaders.start()
        # Frames from workers have a reader of their own (the hot path); the
        # others share the full check.
        self._loop.add_reader(_fd(self._sockets.pull), self._on_pull_readable)
        for sock in (self._sockets.xpub, self._sockets.control):
            self._loop.add_reader(_fd(sock), self._on_readable)
        self._schedule_service()
        self.ready.set()
        log.info(
            "bridge %s serving %s (host %s, redis %s)",
            __version__,
            self.config.paths.directory,
            self.config.host,
            "on" if self._redis else "off: single-host",
        )
        try:
            await self._stopping.wait()
        finally:
            trim_task.cancel()
            await self._shutdown(redis_task)

    def stop(self) -> None:
        """Ask the bridge to shut down (safe from a signal handler and twice)."""
        self._stopping.set()

    async def _shutdown(self, redis_task: asyncio.Task[None] | None) -> None:
        """Stop intake, drain what workers already sent, then close in order."""
        assert self._sockets is not None and self._loop is not None
        sockets = self._sockets
        # 1. Stop being woken: nothing new is read after the final drain.
        for sock in (sockets.pull, sockets.xpub, sockets.control):
            self._loop.remove_reader(_fd(sock))
        with contextlib.suppress(ValueError, RuntimeError):
            for signum in STOP_SIGNALS:
                self._loop.remove_signal_handler(signum)
        # 2. Unbind PULL and forward all workers handed over, so nothing accepted
        #    is lost; let out what the rejoin hold kept, save who is connected.
        for watcher in (self._pacer, self._backlog):
            if watcher is not None:
                watcher.close()
        sockets.stop_intake(self._drain_pull)
        if self._hold is not None:
            self._hold.close()
        # 3. Give the Redis side its chance to flush, then close it.
        if self._redis is not None:
            await self._redis.close()
        if redis_task is not None:
            redis_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await redis_task
        # 4. Close sockets (XPUB lingers briefly to hand out queued deliveries),
        #    remove the socket files and release the lock.
        sockets.close()
        assert self._context is not None
        self._context.term()
        log.info("bridge stopped (took %d message(s) from workers)", self.counters["accepted"])

    def _make_redis_side(self) -> RedisPort:
        # Imported only with redis_url.
        from .redis_side import RedisSide  # noqa: PLC0415
        from .stream_side import StreamSide  # noqa: PLC0415

        kind = StreamSide if self.config.mode == "stream" else RedisSide
        side: RedisPort = kind(
            self.config,
            deliver=self.deliver_from_redis,
            status_provider=self.local_status,
            delivery_held=lambda: self._hold is not None and self._hold.keeping,
        )
        return side

    # -- servicing sockets ------------------------------------------------------

    def _schedule_service(self) -> None:
        if not self._service_scheduled and self._loop is not None:
            self._service_scheduled = True
            self._loop.call_soon(self._service)

    def _on_readable(self) -> None:
        # Serve at once rather than a loop turn later: each turn is a wake-up
        # that costs latency (about 15% of p50 across hosts).
        if not self._service_scheduled:
            self._service()

    def _on_pull_readable(self) -> None:
        """Frames from workers: drain them, then look at XPUB only. Reading PULL to
        EAGAIN re-arms its FD, so only XPUB (our sends touched it) needs a check."""
        if self._service_scheduled or self._sockets is None or self._stopping.is_set():
            return
        if self._pulling() and self._drain_pull():
            self._schedule_service()
        else:
            self._look_at_xpub()

    def _service(self) -> None:
        self._service_scheduled = False
        if self._sockets is None or self._stopping.is_set():
            return
        s = self._sockets
        # EVENTS first: a recv that finds nothing raises zmq.Again, which costs
        # twice as much as asking.
        busy = False
        if _events(s.xpub) & _POLLIN:
            busy |= self._drain_subscriptions()
        if self._pulling() and _events(s.pull) & _POLLIN:
            busy |= self._drain_pull()
        if _events(s.control) & _POLLIN and self._control is not None:
            busy |= self._control.drain()
        if busy or self._any_readable():
            self._schedule_service()

    def _any_readable(self) -> bool:
        """ZeroMQ's FD is edge-triggered: re-check EVENTS after our own sends."""
        assert self._sockets is not None
        s = self._sockets
        socks = (s.pull, s.xpub, s.control) if self._pulling() else (s.xpub, s.control)
        return any(_events(sock) & _POLLIN for sock in socks)

    def _pulling(self) -> bool:
        """False while subscribers (see .pacing, .backlog) or a congested Redis hold
        local publishers back."""
        pacer, redis, watch = self._pacer, self._redis, self._backlog
        held = (pacer is not None and pacer.held) or (watch is not None and watch.backlog.over)
        return not held and (redis is None or not redis.congested)

    def _drain_pull(self) -> bool:
        """Handle up to BATCH frames from workers; True if more may be waiting."""
        assert self._sockets is not None
        pull = self._sockets.pull
        xpub_send = self._local_send
        redis = self._redis
        limit = self.config.max_message_bytes
        counters = self.counters
        host = self.config.host
        desk = self._desk  # stream mode: its gate, and its catch-up hold after a restart
        admit, catchup = (desk.gate, desk.hold) if desk is not None else (None, None)
        accepted = frames = taken = sent = 0
        if redis is not None:
            redis.defer_flush()  # one write for the whole drain, at its end, not a turn later
        more = True  # unless the loop stops early: BATCH read, more may wait
        for n in range(BATCH):
            # Most wake-ups bring one frame: after it, asking EVENTS (1.4 us)
            # is cheaper than the EAGAIN a second recv would raise (3.7 us).
            if n == 1 and not _events(pull) & _POLLIN:
                more = False
                break
            try:
                frame = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                more = False
                break
            size = len(frame)
            if size > limit:
                counters["rejected_oversized"] += 1
                discard_rest(pull)
                continue
            try:
                env = check_frame(frame)
            except ProtocolError as exc:
                # Workers send one frame per message; the rest of a multipart
                # one goes with its first part. (RCVMORE is only read here: it
                # costs more than a recv on the hot path.)
                discard_rest(pull)
                counters["rejected_malformed"] += 1
                self._note_bad_frame(exc)
                continue
            if admit is not None and not admit(env):
                continue  # before its resume marker: it comes again (confirms)
            accepted += env.messages
            frames += 1
            sent += size
            if env.host != host:
                self._note_foreign_host(env.origin, env.host)
            if catchup is not None and not env.flags & FLAG_HOST_ONLY and catchup.take(frame):
                pass  # a restarted bridge catching up: delivered once it has (see .catchup)
            elif size <= LOCAL_FRAME_MAX:
                xpub_send(frame, zmq.NOBLOCK)
            else:
                send_pieces(xpub_send, frame)
            if redis is not None and not env.flags & FLAG_HOST_ONLY:
                redis.publish(frame, frame.index(b"\0"), env.messages, env)
            if size > TRIM_FRAME_BYTES:  # a large frame: count the batch's bytes
                self._trim_due = True
                taken += size
                if taken > BATCH_BYTES:
                    break
        counters["accepted"] += accepted
        counters["accepted_frames"] += frames
        counters["delivered"] += accepted
        if redis is not None:
            redis.flush()
        self._sent(sent)
        return more

    def inject(self, frame: bytes) -> bool:
        """Publish a frame made inside the bridge's process (the circus plugin's
        process events) as if a local worker had sent it. False if refused."""
        if self._sockets is None or self._stopping.is_set():
            return False
        try:
            env = check_frame(frame)
        except ProtocolError as exc:
            self.counters["rejected_malformed"] += 1
            self._note_bad_frame(exc)
            return False
        self.counters["accepted"] += env.messages
        self.counters["accepted_frames"] += 1
        send_local(self._local_send, frame)
        self.counters["delivered"] += env.messages
        self._sent(len(frame))
        if self._redis is not None and not env.flags & FLAG_HOST_ONLY:
            self._redis.publish(frame, frame.index(b"\0"), env.messages)
        self._schedule_service()
        return True

    def deliver_from_redis(self, frames: list[bytes]) -> None:
        """Deliver frames that other hosts sent (called by the Redis side)."""
        if self._sockets is None:
            return
        sent = 0  # counted, never held back: Redis does not wait
        for frame in frames:
            if len(frame) > self.config.max_message_bytes:
                self.counters["rejected_oversized"] += 1
                continue
            try:
                env = check_frame(frame)
            except ProtocolError as exc:
                self.counters["rejected_malformed"] += 1
                self._note_bad_frame(exc)
                continue
            # Loss between hosts shows here (and in each worker, which reports it);
            # replays after a Redis reconnect stop here.
            key = env.channel if env.target is None else inbox_channel(env.target)
            count = env.messages
            if count == 1:
                if self.tracker.observe(env.origin, key, env.epoch, env.seq) == DUPLICATE:
                    self.counters["duplicates"] += 1
                    continue
            else:
                seen = self.tracker.observe_run(env.origin, key, env.epoch, env.seq, count)
                if seen is not None:
                    repeats = seen.count(DUPLICATE)
                    self.counters["duplicates"] += repeats
                    if repeats == count:
                        continue
                    # Partly new (not seen in practice: Redis replays whole
                    # values): the workers drop the repeated part themselves.
                    count -= repeats
            if len(frame) <= LOCAL_FRAME_MAX:  # the hold may change _local_send meanwhile
                self._local_send(frame, zmq.NOBLOCK)
            else:
                send_pieces(self._local_send, frame)
            self.counters["from_redis"] += count
            self.counters["delivered"] += count
            sent += len(frame)
        self._sent(sent)
        self._look_at_xpub()

    def _look_at_xpub(self) -> None:
        """Our sends to XPUB may have taken its FD's edge: ask its EVENTS (only its own)."""
        sockets = self._sockets
        if not self._service_scheduled and sockets is not None and _events(sockets.xpub) & _POLLIN:
            self._schedule_service()

    def _drain_subscriptions(self) -> bool:
        assert self._sockets is not None and self._replies is not None
        xpub = self._sockets.xpub
        replies, holders = self._replies, self._holders
        for _ in range(BATCH):
            try:
                message = xpub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            frame = message.bytes
            if xpub.getsockopt(zmq.RCVMORE):
                holders.discard_rest(xpub)
                self.counters["rejected_subscriptions"] += 1
                continue
            if frame[:1] in REQUESTS:  # sync, history, leader: answered by the bridge
                replies.answer(frame)
                continue
            if frame[:1] == PACE_ACK or frame[1:] == PACE_TOPIC:
                self._paced(message, frame)
                continue
            if frame[:1] == b"\x00":
                self._trim_due = True  # libzmq freed its trie entry
                holders.cancelled(message, frame)
            elif self._backlog is not None:
                self._backlog.subscribed(message)  # its connection may hold frames now
            try:
                change = self.interest.feed(frame)
            except ProtocolError as exc:
                if isinstance(exc, SubscriptionRefused):
                    self._refuse(exc)
                else:
                    self.counters["rejected_subscriptions"] += 1
                    self._note_bad_frame(exc)
                holders.refused(message, frame)  # libzmq stored it all the same
                continue
            if frame[0] == 1 and self._desk is not None:
                self._desk.subscribed(frame)  # a worker's inbox: hello
            if change is None:
                continue
            worker = change.topic.worker
            if worker is not None:
                log.debug("worker %s %s", worker, "arrived" if change.added else "left")
                self._leaders.worker_changed(worker, change.added)
                if self._hold is not None:
                    self._hold.worker_changed(worker, change.added)
            if self._redis is not None:
                if change.added:
                    self._redis.add_interest(change.topic)
                else:
                    self._redis.remove_interest(change.topic)
        return True

    def _paced(self, message: zmq.Frame, frame: bytes) -> None:
        """A subscriber's ack, or its (un)subscription to the markers: local only."""
        if frame[:1] == PACE_ACK and self._pacer is not None:
            try:
                self._pacer.ack(frame)
            except ProtocolError as exc:
                self.counters["rejected_subscriptions"] += 1
                self._note_bad_frame(exc)
            else:
                if self._backlog is not None:
                    self._backlog.acked(message, frame)  # it has read up to there

    def _refuse(self, exc: SubscriptionRefused) -> None:
        """A subscription past ``max_subscriptions``/``max_patterns``: never sent to
        Redis; counted, logged now and then, and told to its subscribers."""
        self.counters["refused_subscriptions"] += 1
        if self.counters["refused_subscriptions"] & 1023 == 1:
            log.warning("%s (%d refused so far)", exc, self.counters["refused_subscriptions"])
        self.last_error = str(exc)
        assert self._replies is not None
        self._replies.notice(exc)

    async def _trim_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(TRIM_INTERVAL)
            if self._trim_due:
                self._trim_due = False
                trim_heap()

    def _note_foreign_host(self, worker: str, host: str) -> None:
        """A worker names another host than its bridge: ``ignore_hosts`` and the
        ``host`` of its events would not be what the user expects. Said once."""
        self.counters["foreign_host"] += 1
        if worker not in self._warned_workers and len(self._warned_workers) < 1000:
            self._warned_workers.add(worker)
            self.last_error = (
                f"worker {worker!r} reports host {host!r} but this bridge is "
                f"{self.config.host!r}: give both the same CIRCUS_EVENTS_HOST"
            )
            log.warning(self.last_error)

    def _note_bad_frame(self, exc: Exception) -> None:
        self.last_error = f"rejected a frame: {exc}"
        log.debug(self.last_error)

    # -- status ---------------------------------------------------------------

    def local_status(self) -> dict[str, Any]:
        """This host's view: identity, workers, counters (no Redis part)."""
        return {
            "host": self.config.host,
            "namespace": self.config.namespace,
            "node_id": self.config.node_id.hex(),
            "version": __version__,
            "pid": os.getpid(),
            "dir": self.config.paths.directory,
            "uptime": round(time.time() - self.started_at, 3),
            "workers": self.interest.workers(),
            "subscriptions": len(self.interest),
            "patterns": self.interest.patterns,
            "limits": self.limits(),
            "counters": {
                **self.counters,
                "gaps": self.tracker.gaps,
                "missed": self.tracker.missed,
            },
            "rejoin": self._hold.status() if self._hold is not None else None,
            "pacing": self._pacer.status() if self._pacer is not None else None,
            "backlog": self._backlog.status() if self._backlog is not None else None,
            "last_error": self.last_error,
        }

    def limits(self) -> dict[str, int]:
        """The memory limits in force, and what they allow at most, in bytes."""
        return memory_limits(self.config)

    def status(self) -> dict[str, Any]:
        """Everything ``circus-events status`` shows for this host."""
        status = self.local_status()
        status["mode"] = self.config.mode if self.config.redis_url else "single-host"
        status["redis"] = self._redis.status() if self._redis is not None else None
        status["leaders"] = self._leaders.status()
        return status


def run_bridge(config: BridgeConfig, *, ready: Callable[[], None] | None = None) -> None:
    """Run a bridge in this thread until SIGTERM/SIGINT/SIGHUP (the CLI's entry point)."""

    async def main() -> None:
        bridge = Bridge(config)
        if ready is not None:
            asyncio.get_running_loop().call_soon(ready)
        await bridge.run()

    settle_heap()
    asyncio.run(main())
