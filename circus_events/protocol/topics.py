"""Channel names, subscription patterns and their ZeroMQ topics.

Theory of operation
-------------------
A message frame starts with its topic: the channel name in UTF-8 followed by
one NUL byte. ZeroMQ filters subscriptions by byte prefix, so:

* an exact channel ``orders.paid`` subscribes to ``b"orders.paid\\0"``; the NUL
  stops ``orders.paid`` from also matching ``orders.paid.eu``;
* a glob pattern ``orders.*`` subscribes to its literal prefix ``b"orders."``
  and the receiver filters the rest with :class:`Pattern`, which has the
  meaning of Redis ``PSUBSCRIBE`` (``*``, ``?``, ``[...]``, ``[^...]``).

The bridge reads a subscription that ends in NUL as exact and any other as a
prefix. Channels that start with ``@`` are reserved for the bus itself: a
worker's inbox is ``@w:<worker id>``.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from .._exceptions import ChannelError

__all__ = [
    "GLOB_CHARS",
    "INBOX_PREFIX",
    "MAX_CHANNEL_BYTES",
    "MAX_TOPIC_BYTES",
    "MAX_WORKER_ID_BYTES",
    "Pattern",
    "SubscriptionTopic",
    "channel_topic",
    "inbox_channel",
    "inbox_topic",
    "parse_subscription_topic",
    "validate_channel",
    "validate_worker_id",
]

#: Longest channel name, in UTF-8 bytes. Redis allows more; 200 keeps every
#: topic, Redis channel name and log line readable and bounded.
MAX_CHANNEL_BYTES: Final = 200
#: Longest worker id, in UTF-8 bytes (it travels in every header).
MAX_WORKER_ID_BYTES: Final = 200
#: Characters that make a subscription a glob pattern (Redis PSUBSCRIBE).
GLOB_CHARS: Final = frozenset("*?[")
#: Reserved for the bus: worker inboxes and control channels.
SYSTEM_PREFIX: Final = "@"
INBOX_PREFIX: Final = "@w:"
#: Longest name a bus ever uses on the wire, a worker's inbox: anything longer
#: that arrives (a subscription, a Redis channel) is no bus's.
MAX_TOPIC_BYTES: Final = MAX_CHANNEL_BYTES + len(INBOX_PREFIX) + MAX_WORKER_ID_BYTES
#: Leadership changes are published on ``@leader.<role>``: the one system
#: channel workers may subscribe to.
LEADER_EVENTS_PREFIX: Final = "@leader."

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\\]]")
_FORBIDDEN_IN_PATTERN = re.compile(r"[\x00-\x1f\x7f\\]")
_FORBIDDEN_IN_WORKER = re.compile(r"[\x00-\x1f\x7f]")


def _check_name(kind: str, name: object, forbidden: re.Pattern[str], limit: int) -> bytes:
    if not isinstance(name, str):
        raise ChannelError(f"{kind} must be a str, not {type(name).__name__}")
    if not name:
        raise ChannelError(f"{kind} must not be empty")
    bad = forbidden.search(name)
    if bad is not None:
        raise ChannelError(f"{kind} {name!r} contains the forbidden character {bad.group()!r}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ChannelError(f"{kind} {name!r} is not valid Unicode text") from None
    if len(encoded) > limit:
        raise ChannelError(
            f"{kind} {name[:40]!r}... is {len(encoded)} bytes long; the limit is {limit}"
        )
    return encoded


def validate_channel(channel: object, *, allow_system: bool = False) -> bytes:
    """Check a channel name one can publish to; return its UTF-8 bytes.

    Glob characters are refused so that every published channel can also be
    subscribed to exactly; ``@`` channels are the bus's own.
    """
    encoded = _check_name("channel", channel, _FORBIDDEN, MAX_CHANNEL_BYTES)
    assert isinstance(channel, str)
    if any(c in GLOB_CHARS for c in channel):
        raise ChannelError(
            f"channel {channel!r} contains a glob character (* ? [); "
            "those are for subscription patterns"
        )
    if not allow_system and channel.startswith(SYSTEM_PREFIX):
        raise ChannelError(f"channel {channel!r}: names starting with '@' are reserved")
    return encoded


def validate_worker_id(worker: object) -> bytes:
    """Check a worker id (any printable text); return its UTF-8 bytes."""
    return _check_name("worker id", worker, _FORBIDDEN_IN_WORKER, MAX_WORKER_ID_BYTES)


def channel_topic(channel: str) -> bytes:
    """The exact ZeroMQ topic of a (valid) channel: its bytes and one NUL."""
    return channel.encode("utf-8") + b"\0"


def inbox_channel(worker: str) -> str:
    """The reserved channel a worker's direct messages travel on."""
    return INBOX_PREFIX + worker


def inbox_topic(worker: str) -> bytes:
    """The ZeroMQ topic of a worker's inbox."""
    return channel_topic(inbox_channel(worker))


class SubscriptionTopic(NamedTuple):
    """What a ZeroMQ subscription means, as the bridge reads it."""

    #: The channel (exact) or the literal prefix (pattern), without the NUL.
    name: str
    #: True for an exact channel (Redis SUBSCRIBE), False for a prefix.
    exact: bool

    @property
    def worker(self) -> str | None:
        """The worker id when this is a worker's inbox, else None."""
        if self.exact and self.name.startswith(INBOX_PREFIX):
            return self.name[len(INBOX_PREFIX) :]
        return None


def parse_subscription_topic(topic: bytes) -> SubscriptionTopic:
    """Read a subscription topic received on the bridge's XPUB socket.

    Raises :class:`ChannelError` for topics no client would send.
    """
    exact = topic.endswith(b"\0")
    body = topic[:-1] if exact else topic
    if b"\0" in body:
        raise ChannelError(f"subscription topic {topic[:60]!r} has a NUL inside")
    try:
        name = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ChannelError(f"subscription topic {topic[:60]!r} is not UTF-8") from None
    if len(body) > MAX_TOPIC_BYTES:
        raise ChannelError(f"subscription topic {topic[:60]!r}... is too long")
    if exact and name.startswith(INBOX_PREFIX):
        # An inbox names a worker: status lists it (control characters would
        # come out six times longer in its JSON).
        validate_worker_id(name[len(INBOX_PREFIX) :])
    return SubscriptionTopic(name, exact)


class Pattern:
    """A subscription pattern with the meaning of Redis PSUBSCRIBE.

    ``Pattern("orders.*")`` matches ``orders.paid`` and ``orders.eu.paid``; a
    pattern without glob characters matches exactly that channel. ``prefix``
    is what to subscribe to in ZeroMQ; ``matches`` filters what arrives.
    """

    __slots__ = ("_regex", "exact", "prefix", "text", "topic")

    def __init__(self, text: str) -> None:
        _check_name("pattern", text, _FORBIDDEN_IN_PATTERN, MAX_CHANNEL_BYTES)
        if text.startswith(SYSTEM_PREFIX) and not text.startswith(LEADER_EVENTS_PREFIX):
            raise ChannelError(f"pattern {text!r}: names starting with '@' are reserved")
        self.text = text
        literal, regex = _translate(text)
        self.exact = literal == text
        #: The literal start of the pattern (str): everything before the first glob character.
        self.prefix = literal
        #: The ZeroMQ subscription: exact topic, or the literal prefix's bytes.
        self.topic = channel_topic(text) if self.exact else literal.encode("utf-8")
        self._regex = re.compile(regex, re.DOTALL)

    def matches(self, channel: str) -> bool:
        """True when ``channel`` is matched by this pattern."""
        if self.exact:
            return channel == self.text
        return self._regex.fullmatch(channel) is not None

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _translate(pattern: str) -> tuple[str, str]:
    """Translate a glob into (literal prefix, regular expression).

    The expression takes linear time: ``*`` run together count once, and each
    stretch between two ``*`` is found at its leftmost place and kept there
    (an atomic group). For a glob that is enough (a later place never helps
    what follows), and it stops the backtracking that made ``.*.*...Z``
    take exponential time on a channel it does not match: any worker or
    browser chooses its patterns.
    """
    stretches: list[list[str]] = [[]]  # the single-character pieces between stars
    literal_end: int | None = None
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            literal_end = i if literal_end is None else literal_end
            if stretches[-1] or len(stretches) == 1:
                stretches.append([])
        elif c == "?":
            literal_end = i if literal_end is None else literal_end
            stretches[-1].append(".")
        elif c == "]":
            raise ChannelError(f"pattern {pattern!r} has a ']' without its '['")
        elif c == "[":
            literal_end = i if literal_end is None else literal_end
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ChannelError(f"pattern {pattern!r} has a '[' without its ']'")
            body = pattern[i + 1 : end]
            if body in ("", "^"):
                raise ChannelError(f"pattern {pattern!r} has an empty character class")
            stretches[-1].append(_translate_class(body))
            i = end
        else:
            stretches[-1].append(re.escape(c))
        i += 1
    literal = pattern if literal_end is None else pattern[:literal_end]
    first, *middle_and_last = ("".join(stretch) for stretch in stretches)
    if not middle_and_last:
        return literal, first
    *middle, last = middle_and_last
    return literal, first + "".join(f"(?>.*?{m})" for m in middle) + ".*" + last


def _translate_class(body: str) -> str:
    """Translate the inside of ``[...]`` into a regex class."""
    negate = body.startswith("^")
    if negate:
        body = body[1:]
    out: list[str] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = sorted((body[i], body[i + 2]))
            out.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
        else:
            out.append(re.escape(body[i]))
            i += 1
    return ("[^" if negate else "[") + "".join(out) + "]"
