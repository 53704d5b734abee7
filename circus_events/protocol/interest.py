"""Local interest: which topics the workers on this host subscribe to.

Theory of operation
-------------------
The bridge's XPUB socket runs in "verboser" mode, so it hears every
subscribe and every unsubscribe from every worker, including the
unsubscribes libzmq makes for a worker whose connection went away. Clients
subscribe to each ZeroMQ topic once per socket, so a count per topic is the
number of sockets interested in it. The table reports only the changes that
matter upstream: a topic gaining its first subscriber or losing its last.
Inbox topics (``@w:<worker>``) double as presence: a worker is present while
its inbox has a subscriber.

The table is bounded: past ``max_subscriptions`` distinct topics, or
``max_patterns`` distinct prefixes (each one a Redis ``PSUBSCRIBE``, which
every ``PUBLISH`` on that Redis must match against), a new topic is refused
(:class:`SubscriptionRefused`) and never reaches Redis. A later subscription
to a topic already held is always accepted: it costs nothing upstream.
Refused topics are remembered (up to ``max_subscriptions`` of them) so that
their unsubscribes do not take a live topic's count down.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .._exceptions import ChannelError, ProtocolError
from .envelope import REPLAY_TOKEN_BYTES
from .topics import Pattern, SubscriptionTopic, parse_subscription_topic, validate_worker_id

__all__ = [
    "FLUSH_CHANNEL",
    "HISTORY_END_CHANNEL",
    "HISTORY_REQUEST",
    "MAX_SUBSCRIPTION_FRAME",
    "SYNC_CHANNEL",
    "SYNC_REQUEST",
    "HistoryRequest",
    "InterestChange",
    "InterestTable",
    "SubscriptionRefused",
    "build_history_request",
    "parse_history_request",
    "parse_sync_request",
]

#: First byte of a sync request that a worker sends up its XSUB socket after
#: its subscriptions (0 and 1 are unsubscribe and subscribe). The bridge
#: answers on the worker's inbox, on ``SYNC_CHANNEL``, once it has read the
#: request, that is once every earlier subscription of that worker is applied.
SYNC_REQUEST: Final = b"\x02"
SYNC_CHANNEL: Final = "@sync"
#: First byte of a history request, sent up the XSUB socket after the
#: subscription it is for: ``HISTORY_REQUEST worker NUL token NUL limit NUL
#: since_ms NUL pattern`` (limit and since_ms may be empty; the token is 8
#: bytes without NUL). The bridge
#: replays matching entries to the worker's inbox (``FLAG_REPLAY``), then
#: ``HISTORY_END_CHANNEL`` with the token and an error text (empty: all sent).
HISTORY_REQUEST: Final = b"\x03"
HISTORY_END_CHANNEL: Final = "@history"
#: A marker a worker sends itself through the bridge to learn that the bridge
#: has taken everything it published before (``Bus.flush``).
FLUSH_CHANNEL: Final = "@flush"
_MAX_SYNC_TOKEN: Final = 64
#: Longest frame a worker sends up its subscriber socket: the longest topic
#: (``@w:`` and a worker id, or a channel) or history request (worker id,
#: token, two numbers, pattern) with room to spare. The bridge sets it as its
#: XPUB socket's ``MAXMSGSIZE``: libzmq drops a peer that sends a longer one
#: before it is stored (an 8 MB subscription otherwise costs about 700 MiB in
#: libzmq's subscription trie).
MAX_SUBSCRIPTION_FRAME: Final = 1024


class SubscriptionRefused(ProtocolError):
    """A new subscription past the table's limits; ``topic`` says which."""

    def __init__(self, topic: SubscriptionTopic, message: str) -> None:
        super().__init__(message)
        self.topic = topic


class InterestChange(NamedTuple):
    """A topic that gained its first (``added``) or lost its last subscriber."""

    topic: SubscriptionTopic
    added: bool


class InterestTable:
    """Reference-counted subscriptions, fed with raw XPUB subscription frames.

    ``max_subscriptions`` bounds the distinct topics (exact and prefix),
    ``max_patterns`` the distinct prefixes among them.
    """

    __slots__ = ("_counts", "_patterns", "_refused", "max_patterns", "max_subscriptions", "refused")

    def __init__(self, max_subscriptions: int = 10_000, max_patterns: int = 256) -> None:
        self._counts: dict[bytes, int] = {}
        self._refused: dict[bytes, int] = {}
        self._patterns = 0
        self.max_subscriptions = max_subscriptions
        self.max_patterns = max_patterns
        #: Subscriptions refused so far.
        self.refused = 0

    def feed(self, frame: bytes) -> InterestChange | None:
        """Apply one XPUB frame (``\\x01topic`` or ``\\x00topic``).

        Returns the change upstream cares about, or None. Raises
        :class:`ProtocolError` for a frame that is not a subscription.
        """
        if not frame or frame[0] not in (0, 1):
            raise ProtocolError(f"not a subscription frame: {frame[:40]!r}")
        raw = frame[1:]
        try:
            topic = parse_subscription_topic(raw)
        except ChannelError as exc:
            raise ProtocolError(str(exc)) from None
        count = self._counts.get(raw, 0)
        if frame[0] == 1:
            if count == 0:
                self._check_room(raw, topic)
                self._patterns += not topic.exact
            self._counts[raw] = count + 1
            return InterestChange(topic, True) if count == 0 else None
        refused = self._refused.get(raw, 0)
        if refused:
            # Its subscribe was refused: nothing upstream to take down.
            if refused == 1:
                del self._refused[raw]
            else:
                self._refused[raw] = refused - 1
            return None
        if count <= 1:
            # An unsubscribe we never saw subscribed (a bridge restarted under
            # live workers) is ignored: nothing upstream was subscribed for it.
            if self._counts.pop(raw, None) is None:
                return None
            self._patterns -= not topic.exact
            return InterestChange(topic, False)
        self._counts[raw] = count - 1
        return None

    def _check_room(self, raw: bytes, topic: SubscriptionTopic) -> None:
        if len(self._counts) >= self.max_subscriptions:
            limit = f"max_subscriptions ({self.max_subscriptions}) distinct subscriptions"
        elif not topic.exact and self._patterns >= self.max_patterns:
            limit = f"max_patterns ({self.max_patterns}) distinct patterns"
        else:
            return
        self.refused += 1
        if raw in self._refused or len(self._refused) < self.max_subscriptions:
            self._refused[raw] = self._refused.get(raw, 0) + 1
        kind = "channel" if topic.exact else "pattern prefix"
        raise SubscriptionRefused(
            topic, f"subscription to {kind} {topic.name[:60]!r} refused: the bridge holds {limit}"
        )

    def topics(self) -> list[SubscriptionTopic]:
        """Every topic with at least one subscriber."""
        return [parse_subscription_topic(raw) for raw in self._counts]

    def workers(self) -> list[str]:
        """Ids of the workers present (their inbox is subscribed)."""
        found = (parse_subscription_topic(raw).worker for raw in self._counts)
        return sorted(w for w in found if w is not None)

    def count(self, topic: bytes) -> int:
        """How many sockets subscribe to this raw topic."""
        return self._counts.get(topic, 0)

    @property
    def patterns(self) -> int:
        """How many distinct prefix (pattern) topics the table holds."""
        return self._patterns

    def __len__(self) -> int:
        return len(self._counts)


def parse_sync_request(frame: bytes) -> tuple[str, bytes]:
    """Read ``SYNC_REQUEST worker NUL token``; raise :class:`ProtocolError` if malformed."""
    worker_end = frame.find(b"\0", 1)
    if not frame.startswith(SYNC_REQUEST) or worker_end < 0:
        raise ProtocolError(f"not a sync request: {frame[:40]!r}")
    token = frame[worker_end + 1 :]
    if len(token) > _MAX_SYNC_TOKEN:
        raise ProtocolError("sync token is too long")
    try:
        worker = frame[1:worker_end].decode("utf-8")
        validate_worker_id(worker)
    except (UnicodeDecodeError, ChannelError) as exc:
        raise ProtocolError(f"sync request names no valid worker: {exc}") from None
    return worker, token


class HistoryRequest(NamedTuple):
    """A worker asks for recent events matching ``pattern``."""

    worker: str
    token: bytes
    #: At most this many of the newest matching entries (None: no limit).
    limit: int | None
    since_ms: int | None
    pattern: str


def build_history_request(
    worker: str, token: bytes, limit: int | None, since_ms: int | None, pattern: str
) -> bytes:
    """Encode a history request (the client side of :func:`parse_history_request`)."""
    fields = (
        worker.encode("utf-8"),
        token,
        b"" if limit is None else str(limit).encode(),
        b"" if since_ms is None else str(since_ms).encode(),
        pattern.encode("utf-8"),
    )
    return HISTORY_REQUEST + b"\0".join(fields)


def parse_history_request(frame: bytes) -> HistoryRequest:
    """Read a history request; raise :class:`ProtocolError` if malformed."""
    parts = frame[1:].split(b"\0")
    if not frame.startswith(HISTORY_REQUEST) or len(parts) != 5:
        raise ProtocolError(f"not a history request: {frame[:40]!r}")
    raw_worker, token, raw_limit, raw_since, raw_pattern = parts
    if len(token) != REPLAY_TOKEN_BYTES:
        raise ProtocolError("history token must be 8 bytes")
    try:
        worker = raw_worker.decode("utf-8")
        validate_worker_id(worker)
        pattern = raw_pattern.decode("utf-8")
        Pattern(pattern)
        limit = int(raw_limit) if raw_limit else None
        since_ms = int(raw_since) if raw_since else None
    except (UnicodeDecodeError, ChannelError, ValueError) as exc:
        raise ProtocolError(f"bad history request: {exc}") from None
    if (limit is not None and limit < 0) or (since_ms is not None and since_ms < 0):
        raise ProtocolError("history limit and since must not be negative")
    return HistoryRequest(worker, token, limit, since_ms, pattern)
