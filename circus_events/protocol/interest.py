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
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .._exceptions import ChannelError, ProtocolError
from .topics import SubscriptionTopic, parse_subscription_topic, validate_worker_id

__all__ = [
    "FLUSH_CHANNEL",
    "SYNC_CHANNEL",
    "SYNC_REQUEST",
    "InterestChange",
    "InterestTable",
    "parse_sync_request",
]

#: First byte of a sync request that a worker sends up its XSUB socket after
#: its subscriptions (0 and 1 are unsubscribe and subscribe). The bridge
#: answers on the worker's inbox, on ``SYNC_CHANNEL``, once it has read the
#: request, that is once every earlier subscription of that worker is applied.
SYNC_REQUEST: Final = b"\x02"
SYNC_CHANNEL: Final = "@sync"
#: A marker a worker sends itself through the bridge to learn that the bridge
#: has taken everything it published before (``Bus.flush``).
FLUSH_CHANNEL: Final = "@flush"
_MAX_SYNC_TOKEN: Final = 64


class InterestChange(NamedTuple):
    """A topic that gained its first (``added``) or lost its last subscriber."""

    topic: SubscriptionTopic
    added: bool


class InterestTable:
    """Reference-counted subscriptions, fed with raw XPUB subscription frames."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[bytes, int] = {}

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
            self._counts[raw] = count + 1
            return InterestChange(topic, True) if count == 0 else None
        if count <= 1:
            # An unsubscribe we never saw subscribed (a bridge restarted under
            # live workers) is ignored: nothing upstream was subscribed for it.
            if self._counts.pop(raw, None) is None:
                return None
            return InterestChange(topic, False)
        self._counts[raw] = count - 1
        return None

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
