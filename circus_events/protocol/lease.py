"""Leader election: the timing rules, the messages, and the two state machines.

Theory of operation
-------------------
A worker that calls ``bus.leader(role)`` is a *candidate*: every
:func:`retry_period` it sends its bridge a ``want`` request (up its
subscription socket, like a sync request). Its bridge holds the lease for
the role on behalf of the host (in Redis, or alone without Redis) and, when
it wins it, offers the term to one live candidate (``elected``, with the
term's fencing token). The candidate answers with a ``want`` carrying that
token; the bridge renews the lease and confirms that request (``ok``).

The safety rule is client-go's: a worker counts its term on its own
monotonic clock *from the moment it sent the request the bridge confirmed*,
and believes it leads only until that moment plus :func:`renew_deadline`
(two thirds of the ttl). The lease the bridge renewed for that request
started later and lasts the whole ttl, so the worker has stopped believing
before the lease can expire in Redis and anyone else can be elected, even
if it hears nothing more (a SIGSTOPped worker finds its deadline passed on
SIGCONT). A leader that keeps renewing keeps its term.

A bridge ends a term when the holder says so (``quit``, ``withdraw``), dies
(its inbox subscription goes), stops renewing (silent past the renew
deadline), or when the lease cannot be renewed. Unless the holder said it
stopped believing, the bridge waits until the holder's deadline has surely
passed (the last confirmed request's arrival plus the renew deadline: the
request was sent before it arrived) before any other term begins.

:class:`WorkerTerm` is a candidate's side, :class:`RoleDesk` a bridge's
side of one role; both are pure: times come in as numbers.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .._exceptions import ChannelError, ProtocolError
from .topics import LEADER_EVENTS_PREFIX, validate_channel, validate_worker_id

__all__ = [
    "LEADER_CHANNEL",
    "LEADER_EVENTS_PREFIX",
    "LEADER_REQUEST",
    "LEASE_SCOPES",
    "MAX_TTL",
    "MIN_TTL",
    "OP_QUIT",
    "OP_WANT",
    "OP_WITHDRAW",
    "Change",
    "LeaderReply",
    "LeaderRequest",
    "RoleDesk",
    "Term",
    "WorkerTerm",
    "build_leader_reply",
    "build_leader_request",
    "check_role",
    "check_ttl",
    "leader_channel",
    "parse_leader_reply",
    "parse_leader_request",
    "poll_period",
    "renew_deadline",
    "retry_period",
]

#: First byte of a leader request up a worker's subscription socket
#: (0, 1: unsubscribe/subscribe; 2: sync; 3: history).
LEADER_REQUEST: Final = b"\x04"
#: The channel of the bridge's answers, on the worker's inbox.
LEADER_CHANNEL: Final = "@leader"
LEASE_SCOPES: Final = ("cluster", "host")
#: Shortest and longest lease, in seconds.
MIN_TTL: Final = 0.2
MAX_TTL: Final = 86400.0
#: A worker believes it leads for this share of the ttl after the request
#: the bridge confirmed (client-go: renew deadline 10 s of a 15 s lease).
RENEW_FRACTION: Final = 2 / 3
#: A candidate or leader asks every this share of the ttl (client-go's retry
#: period), so a leader has four chances to renew before its deadline.
RETRY_FRACTION: Final = 1 / 6
#: A bridge without the lease tries to take it at least this often (seconds):
#: a released lease is taken over well within 1 s.
POLL_MAX: Final = 0.25

OP_WANT: Final = "w"
OP_QUIT: Final = "q"
OP_WITHDRAW: Final = "x"
_OPS: Final = (OP_WANT, OP_QUIT, OP_WITHDRAW)
#: Most requests a worker remembers the send time of (older answers are ignored).
_MAX_PENDING: Final = 16
_MAX_INT_DIGITS: Final = 20


def renew_deadline(ttl: float) -> float:
    """How long a confirmed request keeps a worker leading (seconds)."""
    return ttl * RENEW_FRACTION


def retry_period(ttl: float) -> float:
    """How often a candidate or leader asks its bridge (seconds)."""
    return ttl * RETRY_FRACTION


def poll_period(ttl: float) -> float:
    """How often a bridge without the lease tries to take it (seconds)."""
    return min(ttl * RETRY_FRACTION, POLL_MAX)


def check_ttl(ttl: object) -> float:
    """The ttl as a float; ChannelError (an ArgumentError's cousin) if out of range."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not MIN_TTL <= ttl <= MAX_TTL:
        raise ChannelError(f"ttl must be a number of seconds from {MIN_TTL} to {MAX_TTL}")
    return float(ttl)


def check_role(role: object) -> str:
    """A role is named like a channel (no glob character, no leading ``@``)."""
    validate_channel(role)
    assert isinstance(role, str)
    if len(role.encode()) + len(LEADER_EVENTS_PREFIX) > 200:
        raise ChannelError(f"role {role[:40]!r}... is too long")
    return role


def leader_channel(role: str) -> str:
    """The channel a role's changes are published on."""
    return LEADER_EVENTS_PREFIX + role


# -- messages ---------------------------------------------------------------------------


class LeaderRequest(NamedTuple):
    """What a worker asks its bridge about one role."""

    op: str
    worker: str
    role: str
    scope: str
    ttl: float
    #: The term the worker holds or is offered (0: none).
    token: int
    #: The request's number (its answer names it).
    req: int
    #: The worker's process id (0: unknown): a dead holder is replaced at once.
    pid: int


def build_leader_request(
    op: str, worker: str, role: str, scope: str, ttl: float, token: int, req: int, pid: int
) -> bytes:
    fields = (worker, role, scope, str(round(ttl * 1000)), str(token), str(req), str(pid))
    return LEADER_REQUEST + op.encode() + "\0".join(fields).encode("utf-8")


def _int(raw: str) -> int:
    if not raw.isdigit() or len(raw) > _MAX_INT_DIGITS:
        raise ProtocolError(f"not a number: {raw[:30]!r}")
    return int(raw)


def parse_leader_request(frame: bytes) -> LeaderRequest:
    """Read a leader request; :class:`ProtocolError` saying why if it is not one."""
    if not frame.startswith(LEADER_REQUEST) or len(frame) < 2:
        raise ProtocolError(f"not a leader request: {frame[:40]!r}")
    op = chr(frame[1])
    try:
        parts = frame[2:].decode("utf-8").split("\0")
    except UnicodeDecodeError:
        raise ProtocolError("leader request is not UTF-8") from None
    if op not in _OPS or len(parts) != 7:
        raise ProtocolError(f"not a leader request: {frame[:40]!r}")
    worker, role, scope, ttl_ms, token, req, pid = parts
    try:
        validate_worker_id(worker)
        check_role(role)
        ttl = check_ttl(_int(ttl_ms) / 1000)
    except ChannelError as exc:
        raise ProtocolError(f"bad leader request: {exc}") from None
    if scope not in LEASE_SCOPES:
        raise ProtocolError(f"bad leader request: scope {scope[:20]!r}")
    return LeaderRequest(op, worker, role, scope, ttl, _int(token), _int(req), _int(pid))


class LeaderReply(NamedTuple):
    """What a bridge tells one worker about one role.

    ``kind``: ``elected`` (the term ``token`` is offered: confirm it),
    ``ok`` (request ``req`` renewed term ``token``), ``lost`` (term ``token``
    is over: ``reason``), ``holder`` (who leads now, for a candidate).
    """

    kind: str
    role: str
    scope: str
    token: int
    req: int
    holder: str
    host: str
    reason: str


_KINDS: Final = ("elected", "ok", "lost", "holder")


def build_leader_reply(reply: LeaderReply) -> bytes:
    kind, role, scope, token, req, holder, host, reason = reply
    return "\0".join((kind, role, scope, str(token), str(req), holder, host, reason)).encode()


def parse_leader_reply(payload: bytes) -> LeaderReply:
    """Read a bridge's leader message; :class:`ProtocolError` if malformed."""
    try:
        parts = payload.decode("utf-8").split("\0")
    except UnicodeDecodeError:
        raise ProtocolError("leader reply is not UTF-8") from None
    if len(parts) != 8 or parts[0] not in _KINDS:
        raise ProtocolError(f"not a leader reply: {payload[:40]!r}")
    kind, role, scope, token, req, holder, host, reason = parts
    return LeaderReply(kind, role, scope, _int(token), _int(req), holder, host, reason)


# -- the worker's side ------------------------------------------------------------------


class Change(NamedTuple):
    """A term began (``elected``) or ended for this worker.

    ``since``/``until``: the monotonic interval in which it led (``until``
    is None while it leads); ``reason`` says why a term ended.
    """

    elected: bool
    token: int
    since: float
    until: float | None
    reason: str


class WorkerTerm:
    """A candidate's view of one role (one per ``Leadership``)."""

    def __init__(self, role: str, scope: str, ttl: float) -> None:
        self.role = role
        self.scope = scope
        self.ttl = ttl
        self.renew_deadline = renew_deadline(ttl)
        self.retry = retry_period(ttl)
        #: The token of the term held (or last held), 0 before any.
        self.token = 0
        #: A term offered by the bridge, not confirmed yet.
        self.offered = 0
        self.leading = False
        self.since = 0.0
        #: Leads while ``now < deadline`` (meaningful while ``leading``).
        self.deadline = 0.0
        #: A term given up that the bridge must hear about (``quit``).
        self.to_quit = 0
        self.holder = ""
        self.holder_host = ""
        self.next_send = 0.0
        self.withdrawn = False
        self._req = 0
        self._sent: dict[int, float] = {}

    def is_leader(self, now: float) -> bool:
        return self.leading and now < self.deadline

    def due(self, now: float) -> bool:
        """True when a request should leave now."""
        return not self.withdrawn and (now >= self.next_send or bool(self.to_quit))

    def request(self, now: float) -> tuple[str, int, int]:
        """The next request to send: (op, token, req); remembers when it left."""
        self._req += 1
        req = self._req
        if self.to_quit:
            token, self.to_quit = self.to_quit, 0
            return OP_QUIT, token, req
        self.next_send = now + self.retry
        self._sent[req] = now
        if len(self._sent) > _MAX_PENDING:
            del self._sent[next(iter(self._sent))]
        token = self.token if self.leading else self.offered
        return OP_WANT, token, req

    def check(self, now: float) -> Change | None:
        """The term's end if its deadline has passed (call before acting, and
        from a timer)."""
        if self.leading and now >= self.deadline:
            return self._end(self.deadline, "renew deadline passed without a renewal")
        return None

    def _end(self, until: float, reason: str) -> Change:
        self.leading = False
        self.to_quit = self.token
        self.holder = ""
        return Change(False, self.token, self.since, until, reason)

    def on_reply(self, reply: LeaderReply, now: float) -> Change | None:
        """Apply a bridge message; the change it makes, if any."""
        if self.withdrawn:
            return None
        change = self.check(now)
        kind, token = reply.kind, reply.token
        if kind == "holder":
            if not self.leading:
                self.holder, self.holder_host = reply.holder, reply.host
        elif kind == "elected":
            if token > self.token and token > self.offered:
                self.offered = token
                self.next_send = now  # confirm at once
        elif kind == "lost":
            if self.leading and token == self.token:
                change = self._end(now, reply.reason or "lost")
                self.to_quit = 0  # the bridge knows
            elif token == self.offered:
                self.offered = 0
        else:  # ok
            sent = self._sent.pop(reply.req, None)
            if sent is None or sent + self.renew_deadline <= now:
                return change  # too old: it proves nothing now
            if self.leading and token == self.token:
                self.deadline = max(self.deadline, sent + self.renew_deadline)
            elif not self.leading and token == self.offered and token > self.token:
                self.offered = 0
                self.token = token
                self.leading = True
                self.since = now
                self.deadline = sent + self.renew_deadline
                self.holder, self.holder_host = reply.holder, reply.host
                return Change(True, token, now, None, "elected")
        return change

    def withdraw(self, now: float) -> Change | None:
        """Stop: no more requests; the end of the term held, if one was."""
        if self.withdrawn:
            return None
        self.withdrawn = True
        if self.is_leader(now):
            return self._end(now, "released")
        return self.check(now)


# -- the bridge's side ------------------------------------------------------------------


class Term(NamedTuple):
    """The term a bridge runs for one role."""

    worker: str
    token: int
    #: When it was offered (bridge monotonic time).
    offered_at: float
    #: When the last request it confirmed arrived (None: none confirmed yet).
    confirmed: float | None


class RoleDesk:
    """A bridge's view of one role: its candidates and the term it runs.

    The I/O layer asks :meth:`eligible` whether a term may begin (and, with
    Redis, takes the lease first), then :meth:`begin`; it hands every request
    to :meth:`want`, :meth:`quit` or :meth:`withdraw`, departures to
    :meth:`left`, and calls :meth:`expire` from a timer.
    """

    def __init__(self, role: str, scope: str, ttl: float, not_before: float = 0.0) -> None:
        self.role = role
        self.scope = scope
        self.ttl = ttl
        self.renew_deadline = renew_deadline(ttl)
        #: Candidates and when each was last heard from, in order of arrival.
        self.candidates: dict[str, float] = {}
        self.pids: dict[str, int] = {}
        self.term: Term | None = None
        #: No term begins before this (an earlier holder may still believe).
        self.blocked_until = not_before
        #: Who leads the role elsewhere (from the lease), and their host.
        self.holder = ""
        self.holder_host = ""
        self.holder_token = 0

    def hear(self, worker: str, ttl: float, pid: int, now: float) -> None:
        self.candidates[worker] = now
        self.pids[worker] = pid
        if ttl > self.ttl:  # candidates should agree; the longest is the safe one
            self.ttl = ttl
            self.renew_deadline = renew_deadline(ttl)

    def live(self, now: float) -> list[str]:
        """Candidates heard from within the renew deadline, in order of arrival."""
        limit = now - self.renew_deadline
        return [w for w, heard in self.candidates.items() if heard > limit]

    def eligible(self, now: float) -> str | None:
        """The candidate a new term would go to now, or None (a term runs,
        one may still be believed, or nobody is there)."""
        if self.term is not None or now < self.blocked_until:
            return None
        live = self.live(now)
        return live[0] if live else None

    def begin(self, worker: str, token: int, now: float) -> None:
        self.term = Term(worker, token, now, None)
        self.holder_token = token

    def want(self, worker: str, token: int, now: float) -> str:
        """A ``want`` request: ``renew`` (renew the lease, then confirm),
        ``lost`` (tell the worker its term is over) or ``""`` (nothing)."""
        term = self.term
        if term is not None and term.worker == worker and term.token == token:
            return "renew"
        return "lost" if token else ""

    def renewed(self, token: int, arrived: float) -> bool:
        """The lease was renewed for a request that arrived at ``arrived``;
        False if the term changed meanwhile (do not confirm)."""
        term = self.term
        if term is None or term.token != token:
            return False
        self.term = term._replace(confirmed=max(arrived, term.confirmed or arrived))
        return True

    def _finish(self, now: float, *, believed: bool) -> Term | None:
        term = self.term
        if term is None:
            return None
        self.term = None
        if believed and term.confirmed is not None:
            self.blocked_until = max(self.blocked_until, term.confirmed + self.renew_deadline)
        return term

    def quit(self, worker: str, token: int, now: float) -> Term | None:
        """The worker says it no longer believes it holds ``token``: the term ends now."""
        term = self.term
        if term is not None and term.worker == worker and term.token == token:
            return self._finish(now, believed=False)
        return None

    def withdraw(self, worker: str, token: int, now: float) -> Term | None:
        """The worker stops being a candidate (and ends its term, if it held one)."""
        self.candidates.pop(worker, None)
        self.pids.pop(worker, None)
        return self.quit(worker, token, now)

    def left(self, worker: str, now: float, *, dead: bool) -> Term | None:
        """The worker's inbox went away; ``dead``: its process is gone (it
        believes nothing), else wait out its deadline."""
        self.candidates.pop(worker, None)
        self.pids.pop(worker, None)
        term = self.term
        if term is not None and term.worker == worker:
            return self._finish(now, believed=not dead)
        return None

    def lose(self, now: float) -> Term | None:
        """The lease is gone (not renewed, taken, or Redis away): end the term,
        waiting out the holder's deadline."""
        return self._finish(now, believed=True)

    def expire(self, now: float) -> Term | None:
        """End a term whose holder stopped renewing (or never confirmed)."""
        term = self.term
        if term is None:
            return None
        last = term.offered_at if term.confirmed is None else term.confirmed
        if now - last >= self.renew_deadline:
            return self._finish(now, believed=True)
        return None

    def idle(self, now: float) -> bool:
        """True when this desk can be forgotten: no candidate, no term, nothing to wait out."""
        return not self.candidates and self.term is None and now >= self.blocked_until
