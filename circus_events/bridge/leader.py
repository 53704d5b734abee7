"""Leader election, the bridge's part: leases for its host, terms for its workers.

Theory of operation
-------------------
Workers ask through leader requests on their subscription socket
(:mod:`..protocol.lease`); the bridge answers on their inbox
(``LEADER_CHANNEL``). For each role (and scope) a
:class:`~..protocol.lease.RoleDesk` keeps the candidates and the term; this
module does the I/O around it, on the bridge's loop:

* with Redis, the lease of each role is held by the host through one Lua
  script (:mod:`.lease_script`) sent on the bridge's publishing connection
  (:meth:`RedisPort.request`): ``acquire`` every :func:`poll_period` while a
  local candidate waits (a new term, a new fencing token, when it is free or
  already ours), ``renew`` when the holder asks (one renewal per role per
  host), ``release`` when nobody here wants it any more;
* without Redis, the bridge decides alone for its host; its tokens start
  from the clock in milliseconds, and after a start it waits one ttl before
  the first term (a worker of its previous run may still believe);
* a worker's presence is its inbox subscription: when it goes, its term
  ends (at once if its process is gone, else after its deadline);
* changes are published as ``@leader.<role>`` events (JSON).

Everything a worker sends is checked and bounded (``MAX_ROLES`` roles,
``MAX_CANDIDATES`` candidates per role).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import ProtocolError
from ..protocol import Codec, encode_frame
from ..protocol.envelope import FLAG_HOST_ONLY
from ..protocol.lease import LEADER_CHANNEL as LEADER_REPLY_CHANNEL
from ..protocol.lease import (
    OP_QUIT,
    OP_WANT,
    LeaderReply,
    RoleDesk,
    Term,
    build_leader_reply,
    leader_channel,
    parse_leader_request,
    poll_period,
)
from ..protocol.sequence import ChannelNumbers
from .lease_script import LEASE_SCRIPT, lease_keys, parse_lease_value
from .replies import RedisPort

if TYPE_CHECKING:
    from .core import Bridge

__all__ = ["MAX_CANDIDATES", "MAX_ROLES", "TICK", "LeaderDesk"]

log = logging.getLogger("circus_events.leader")

#: Roles (per scope) a bridge keeps track of, and candidates per role.
MAX_ROLES: Final = 1000
MAX_CANDIDATES: Final = 1000
#: Roles whose event channel keeps its numbering at once (see ChannelNumbers).
MAX_NUMBERED_ROLES: Final = 10 * MAX_ROLES
#: How often terms are checked and leases tried (seconds).
TICK: Final = 0.02
#: A candidate silent for this many ttls is forgotten (it asks every sixth of one).
STALE_CANDIDATE: Final = 10


def _nowhere(frame: bytes) -> None:
    """Before the bridge serves, answers have nowhere to go."""


def _pid_alive(pid: int) -> bool:
    """False only when the process surely does not run any more (gone, or a
    zombie its parent has not reaped yet)."""
    if pid <= 0:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return not fields or fields[0] not in (b"Z", b"X")


class LeaderDesk:
    """The leader elections of one bridge (see the module docstring)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        config = self.config = bridge.config
        # Wired in start(), once the bridge serves.
        self._send: Callable[[bytes], object] = _nowhere
        self._inject: Callable[[bytes], bool] = bridge.inject
        self._redis: RedisPort | None = None
        counters = self._counters = bridge.counters
        counters.setdefault("leader_terms", 0)
        counters.setdefault("rejected_leader_requests", 0)
        self._host = config.host
        self._origin = config.host.encode("utf-8")
        self._owner = secrets.token_hex(8)
        self._base = f"{config.redis_prefix}:{config.namespace}:".encode()
        self._started = time.monotonic()
        self.desks: dict[tuple[str, str], RoleDesk] = {}
        #: Roles whose lease this bridge holds in Redis (token of the last term).
        self._owned: dict[tuple[str, str], int] = {}
        #: Roles with a script call on its way (one at a time per role).
        self._busy: set[tuple[str, str]] = set()
        self._next_poll: dict[tuple[str, str], float] = {}
        #: Roles waiting out a departed holder's deadline: its pid, and the
        #: block there was before (it ends early once the process is gone).
        self._departed: dict[tuple[str, str], tuple[int, float]] = {}
        self._last_token = 0
        self._epoch = time.time_ns() // 1000
        self._seq = 0
        # @leader.<role> events, numbered per channel (role names come and go).
        self._numbers = ChannelNumbers(self._epoch, MAX_NUMBERED_ROLES)
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Serve: answer on the bridge's XPUB, hold leases on its Redis side."""
        replies = self._bridge._replies
        assert replies is not None
        replies.on_leader_request = self.feed
        self._send = replies.send_raw
        self._redis = self._bridge._redis
        self._started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="circus-events-leader")
        self._stopper = loop.create_task(self._stop_when(self._bridge._stopping))

    async def _stop_when(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        # A courtesy: the workers give up on their own clocks anyway, and the
        # sockets may be closed already (without Redis, shutdown does not yield).
        with contextlib.suppress(Exception):
            await self.stop()

    def worker_changed(self, worker: str, added: bool) -> None:
        """A worker's inbox gained its first or lost its last subscriber."""
        if not added:
            self.worker_left(worker)

    async def stop(self) -> None:
        """Tell every holder its term is over (the lease is left to expire:
        a holder may not have read that yet)."""
        if self._task is not None:
            self._task.cancel()
        for desk in self.desks.values():
            term = desk.lose(time.monotonic())
            if term is not None:
                self._tell(term.worker, "lost", desk, term.token, reason="the bridge stopped")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK if self.desks else 10 * TICK)
            try:
                self._tick(time.monotonic())
            except Exception:  # never let one role stop the others
                log.exception("leader election tick failed")

    # -- requests -----------------------------------------------------------------------

    def feed(self, frame: bytes) -> None:
        """A leader request from a worker (checked here)."""
        now = time.monotonic()
        try:
            request = parse_leader_request(frame)
        except ProtocolError as exc:
            self._counters["rejected_leader_requests"] += 1
            log.debug("rejected a leader request: %s", exc)
            return
        key = (request.scope, request.role)
        desk = self.desks.get(key)
        if request.op != OP_WANT:
            if desk is None:
                return
            if request.op == OP_QUIT:
                term = desk.quit(request.worker, request.token, now)
            else:
                term = desk.withdraw(request.worker, request.token, now)
            if term is not None:
                self._ended(desk, term, "released", tell=False)
                self._tick_role(key, desk, now)
            return
        if desk is None:
            if len(self.desks) >= MAX_ROLES:
                self._counters["rejected_leader_requests"] += 1
                return
            not_before = self._started + request.ttl if self._redis is None else 0.0
            desk = self.desks[key] = RoleDesk(request.role, request.scope, request.ttl, not_before)
        if request.worker not in desk.candidates and len(desk.candidates) >= MAX_CANDIDATES:
            self._counters["rejected_leader_requests"] += 1
            return
        new = request.worker not in desk.candidates
        desk.hear(request.worker, request.ttl, request.pid, now)
        action = desk.want(request.worker, request.token, now)
        if action == "renew":
            self._renew(key, desk, request.worker, request.token, request.req, now)
        elif action == "lost":
            self._tell(request.worker, "lost", desk, request.token, reason="not the current term")
        elif new and desk.holder:
            self._tell(request.worker, "holder", desk, desk.holder_token)
        if new:
            self._tick_role(key, desk, now)

    def worker_left(self, worker: str) -> None:
        """A worker's inbox lost its last subscriber (it closed or died)."""
        now = time.monotonic()
        for key, desk in list(self.desks.items()):
            if worker not in desk.candidates:
                continue
            pid = desk.pids.get(worker, 0)
            before = desk.blocked_until
            term = desk.left(worker, now, dead=not _pid_alive(pid))
            if term is not None and desk.blocked_until > before and pid > 0:
                # Its socket closes before the kernel marks it dead: look again soon.
                self._departed[key] = (pid, before)
            if term is not None:
                self._ended(desk, term, "the worker went away", tell=False)
                self._tick_role(key, desk, now)

    # -- terms --------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        for key, (pid, before) in list(self._departed.items()):
            desk = self.desks[key]
            if now >= desk.blocked_until:
                del self._departed[key]
            elif not _pid_alive(pid):  # it believes nothing any more
                desk.blocked_until = max(before, now)
                del self._departed[key]
        for key, desk in list(self.desks.items()):
            holder = desk.term.worker if desk.term is not None else None
            for worker, heard in list(desk.candidates.items()):
                if now - heard > STALE_CANDIDATE * desk.ttl and worker != holder:
                    del desk.candidates[worker]  # silent for long: forget it (bounded memory)
                    desk.pids.pop(worker, None)
            term = desk.expire(now)
            if term is not None:
                self._ended(desk, term, "the worker stopped renewing", tell=True)
            self._tick_role(key, desk, now)
            if desk.idle(now) and not {key} & (
                self._owned.keys() | self._busy | self._departed.keys()
            ):
                del self.desks[key]
                self._next_poll.pop(key, None)

    def _tick_role(self, key: tuple[str, str], desk: RoleDesk, now: float) -> None:
        if key in self._busy or desk.term is not None:
            return
        candidate = desk.eligible(now)
        if self._redis is None:
            if candidate is not None:
                self._last_token = max(self._last_token + 1, time.time_ns() // 1_000_000)
                self._begin(desk, candidate, self._last_token, now)
            return
        owned = key in self._owned
        if candidate is None:
            if owned and now >= desk.blocked_until and not desk.live(now):
                self._script(key, desk, "release", 0)
            return
        if owned or now >= self._next_poll.get(key, 0.0):
            self._next_poll[key] = now + poll_period(desk.ttl)
            self._script(key, desk, "acquire", 0)

    def _begin(self, desk: RoleDesk, worker: str, token: int, now: float) -> None:
        desk.begin(worker, token, now)
        desk.holder, desk.holder_host = worker, self._host
        self._counters["leader_terms"] += 1
        self._tell(worker, "elected", desk, token)
        for candidate in desk.candidates:
            if candidate != worker:
                self._tell(candidate, "holder", desk, token)

    def _ended(self, desk: RoleDesk, term: Term, reason: str, *, tell: bool) -> None:
        if tell:
            self._tell(term.worker, "lost", desk, term.token, reason=reason)
        if term.confirmed is not None:
            self._publish(desk, "lost", term.worker, term.token, reason)
        if desk.holder == term.worker:
            desk.holder = desk.holder_host = ""

    def _renew(
        self, key: tuple[str, str], desk: RoleDesk, worker: str, token: int, req: int, now: float
    ) -> None:
        if self._redis is None:
            self._confirmed(desk, worker, token, req, now)
            return
        ttl_ms = str(round(desk.ttl * 1000))
        future = self._request(desk, "renew", ttl_ms, token)
        if future is None:
            self._lost_lease(key, desk, token, "Redis is not connected")
            return

        def done(future: asyncio.Future[Any]) -> None:
            reply = None if future.cancelled() or future.exception() else future.result()
            if reply == 1:
                self._confirmed(desk, worker, token, req, now)
            else:
                why = "the lease was lost" if reply == 0 else "Redis did not renew the lease"
                self._lost_lease(key, desk, token, why)

        future.add_done_callback(done)

    def _confirmed(self, desk: RoleDesk, worker: str, token: int, req: int, arrived: float) -> None:
        first = desk.term is not None and desk.term.confirmed is None
        if desk.renewed(token, arrived):
            self._tell(worker, "ok", desk, token, req=req)
            if first:
                self._publish(desk, "elected", worker, token, "")

    def _lost_lease(self, key: tuple[str, str], desk: RoleDesk, token: int, why: str) -> None:
        if desk.term is not None and desk.term.token == token:
            term = desk.lose(time.monotonic())
            assert term is not None
            self._owned.pop(key, None)
            self._ended(desk, term, why, tell=True)

    # -- Redis --------------------------------------------------------------------------

    def _request(
        self, desk: RoleDesk, op: str, ttl_ms: str, token: int, worker: str = ""
    ) -> asyncio.Future[Any] | None:
        redis = self._redis
        if redis is None or not redis.connected:
            return None
        from .resp import encode_command  # noqa: PLC0415 - with Redis only (hiredis)

        lease, counter, marker = lease_keys(self._base, desk.scope, self._host, desk.role)
        holder = f"{self._host}\t{worker}"
        cmd = encode_command(
            "EVAL", LEASE_SCRIPT, 3, lease, counter, marker, op, self._owner, ttl_ms, token, holder
        )
        return redis.request(cmd)

    def _script(self, key: tuple[str, str], desk: RoleDesk, op: str, token: int) -> None:
        candidate = desk.eligible(time.monotonic()) or ""
        future = self._request(desk, op, str(round(desk.ttl * 1000)), token, candidate)
        if future is None:
            self._owned.pop(key, None)
            return
        self._busy.add(key)

        def done(future: asyncio.Future[Any]) -> None:
            self._busy.discard(key)
            reply = None if future.cancelled() or future.exception() else future.result()
            now = time.monotonic()
            if op == "release":
                self._owned.pop(key, None)
                return
            if not isinstance(reply, list) or len(reply) != 3:
                if reply is not None:
                    log.warning("unexpected lease reply for %s: %r", desk.role, reply)
                self._owned.pop(key, None)
                return
            token, value = int(reply[0]), reply[1]
            _, _, host, worker = parse_lease_value(value)
            if not token:
                self._owned.pop(key, None)
                if (worker, host) != (desk.holder, desk.holder_host):
                    desk.holder, desk.holder_host, desk.holder_token = worker, host, 0
                    for candidate in desk.candidates:
                        self._tell(candidate, "holder", desk, 0)
                return
            self._owned[key] = token
            chosen = desk.eligible(now)
            if chosen is None:
                # Nobody to give it to any more: hand the lease back.
                self._script(key, desk, "release", 0)
                return
            self._begin(desk, chosen, token, now)

        future.add_done_callback(done)

    # -- messages -----------------------------------------------------------------------

    def _tell(
        self, worker: str, kind: str, desk: RoleDesk, token: int, *, req: int = 0, reason: str = ""
    ) -> None:
        reply = LeaderReply(
            kind, desk.role, desk.scope, token, req, desk.holder, desk.holder_host, reason
        )
        self._seq += 1
        self._send(
            encode_frame(
                LEADER_REPLY_CHANNEL,
                origin=self._origin,
                host=self._origin,
                epoch=self._epoch,
                seq=self._seq,
                time=time.time(),
                codec=Codec.RAW,
                payload=build_leader_reply(reply),
                target=worker,
            )
        )

    def _publish(self, desk: RoleDesk, event: str, worker: str, token: int, reason: str) -> None:
        """``@leader.<role>``: elected or lost, for every worker that listens."""
        payload = {
            "role": desk.role,
            "scope": desk.scope,
            "event": event,
            "holder": worker,
            "host": self._host,
            "token": token,
            "reason": reason,
        }
        channel = leader_channel(desk.role)
        # Numbered per channel, as receivers count (a hole would be a gap).
        epoch, seq = self._numbers.next(channel)
        self._inject(
            encode_frame(
                channel,
                origin=self._origin,
                host=self._origin,
                epoch=epoch,
                seq=seq,
                time=time.time(),
                codec=Codec.JSON,
                payload=json.dumps(payload).encode(),
                flags=FLAG_HOST_ONLY if desk.scope == "host" else 0,
            )
        )

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every role this bridge knows: holder, token, time left, candidates."""
        now = time.monotonic()
        roles = []
        for (scope, role), desk in sorted(self.desks.items()):
            term = desk.term
            left = None
            if term is not None and term.confirmed is not None:
                left = round(max(0.0, term.confirmed + desk.renew_deadline - now), 3)
            roles.append(
                {
                    "role": role,
                    "scope": scope,
                    "holder": term.worker if term is not None else desk.holder or None,
                    "host": self._host if term is not None else desk.holder_host or None,
                    "token": term.token if term is not None else desk.holder_token or None,
                    "local": term is not None,
                    "confirmed": term is not None and term.confirmed is not None,
                    "time_left": left,
                    "ttl": desk.ttl,
                    "candidates": len(desk.live(now)),
                }
            )
        return roles
