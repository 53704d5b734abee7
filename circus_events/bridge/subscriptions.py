"""Local interest as Redis subscriptions: what to send, what Redis confirmed.

Theory of operation
-------------------
An exact topic ``x`` becomes ``SUBSCRIBE <base>x``; a prefix topic ``orders.``
becomes ``PSUBSCRIBE <base>orders.*`` with the prefix glob-escaped, where
``<base>`` is ``<redis_prefix>:<namespace>:``. :class:`RedisSubscriptions`
keeps three views:

* *wanted*: what local workers want now (plus the bridge's own channels);
* *requested*: what was sent on the current connection; :meth:`commands`
  sends the difference, many names per command, all in one write;
* *confirmed*: what Redis acknowledged, read from the reply stream.

The confirmed view decides which copy of a message to deliver. Redis sends
one copy per matching subscription (``message`` for the channel, one
``pmessage`` per matching pattern), and its confirmations travel in the same
ordered stream as the messages, so at every message the confirmed view is
exactly what Redis matched against. Rule: the exact subscription owns the
message; without one, the pattern with the longest prefix owns it. Each
message is then delivered once, however the subscriptions overlap.

Sans-IO: bytes in, commands out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..protocol.topics import SubscriptionTopic
from .resp import encode_command

__all__ = ["MAX_NAMES_PER_COMMAND", "RedisSubscriptions", "glob_escape"]

#: Channel names per SUBSCRIBE/PSUBSCRIBE command: keeps each command small
#: while a resubscribe of thousands of topics still goes in one write.
MAX_NAMES_PER_COMMAND: Final = 256
_GLOB_SPECIAL: Final = frozenset(b"*?[]\\")
#: Bound on the cache of which pattern owns a channel.
_OWNER_CACHE_MAX: Final = 10_000


def glob_escape(name: bytes) -> bytes:
    """Escape ``* ? [ ] \\`` so Redis glob matching reads them literally."""
    if not any(byte in _GLOB_SPECIAL for byte in name):
        return name
    out = bytearray()
    for byte in name:
        if byte in _GLOB_SPECIAL:
            out.append(0x5C)
        out.append(byte)
    return bytes(out)


def _unescape_pattern(pattern: bytes) -> bytes:
    """The literal prefix of a pattern this module made (escaped prefix + ``*``)."""
    body = pattern[:-1] if pattern.endswith(b"*") else pattern
    out = bytearray()
    escaped = False
    for byte in body:
        if byte == 0x5C and not escaped:
            escaped = True
            continue
        escaped = False
        out.append(byte)
    return bytes(out)


class RedisSubscriptions:
    """Wanted, requested and confirmed Redis subscriptions of one subscriber."""

    __slots__ = (
        "_owner",
        "_system",
        "base",
        "confirmed_channels",
        "confirmed_patterns",
        "requested_channels",
        "requested_patterns",
        "wanted_channels",
        "wanted_patterns",
    )

    def __init__(self, base: bytes, system_channels: Iterable[bytes] = ()) -> None:
        self.base = base
        self._system = frozenset(system_channels)
        self.wanted_channels: set[bytes] = set(self._system)
        self.wanted_patterns: set[bytes] = set()
        self.requested_channels: set[bytes] = set()
        self.requested_patterns: set[bytes] = set()
        self.confirmed_channels: set[bytes] = set()
        #: Confirmed pattern -> the literal channel prefix it matches.
        self.confirmed_patterns: dict[bytes, bytes] = {}
        self._owner: dict[bytes, bytes | None] = {}

    def redis_name(self, topic: SubscriptionTopic) -> tuple[bool, bytes]:
        """(is a pattern, Redis channel or pattern) for a local topic."""
        name = self.base + topic.name.encode("utf-8")
        if topic.exact:
            return False, name
        return True, glob_escape(name) + b"*"

    def add(self, topic: SubscriptionTopic) -> bool:
        """Want ``topic``; True if that changes what to subscribe to."""
        is_pattern, name = self.redis_name(topic)
        wanted = self.wanted_patterns if is_pattern else self.wanted_channels
        if name in wanted:
            return False
        wanted.add(name)
        return True

    def remove(self, topic: SubscriptionTopic) -> bool:
        """Stop wanting ``topic``; True if that changes what to subscribe to."""
        is_pattern, name = self.redis_name(topic)
        if not is_pattern and name in self._system:
            return False
        wanted = self.wanted_patterns if is_pattern else self.wanted_channels
        if name not in wanted:
            return False
        wanted.discard(name)
        return True

    @property
    def count(self) -> int:
        """Wanted subscriptions, not counting the bridge's own channels."""
        return len(self.wanted_channels) - len(self._system) + len(self.wanted_patterns)

    def is_confirmed(self, topic: SubscriptionTopic) -> bool:
        """Redis has acknowledged the subscription for ``topic``."""
        is_pattern, name = self.redis_name(topic)
        if is_pattern:
            return name in self.confirmed_patterns
        return name in self.confirmed_channels

    @property
    def settled(self) -> bool:
        """Redis has confirmed exactly what is wanted."""
        return self.confirmed_channels == self.wanted_channels and (
            self.confirmed_patterns.keys() == self.wanted_patterns
        )

    def reset(self) -> None:
        """A new connection: nothing requested, nothing confirmed."""
        self.requested_channels.clear()
        self.requested_patterns.clear()
        self.confirmed_channels.clear()
        self.confirmed_patterns.clear()
        self._owner.clear()

    def commands(self) -> bytes:
        """The commands that bring the connection to what is wanted (may be empty).

        New subscriptions go before removals, so a topic that is replaced by
        an overlapping one never leaves a moment with neither.
        """
        out: list[bytes] = []
        plans = (
            (b"SUBSCRIBE", self.wanted_channels - self.requested_channels),
            (b"PSUBSCRIBE", self.wanted_patterns - self.requested_patterns),
            (b"UNSUBSCRIBE", self.requested_channels - self.wanted_channels),
            (b"PUNSUBSCRIBE", self.requested_patterns - self.wanted_patterns),
        )
        for verb, names in plans:
            if not names:
                continue  # an UNSUBSCRIBE without names would drop every subscription
            ordered = sorted(names)
            for start in range(0, len(ordered), MAX_NAMES_PER_COMMAND):
                out.append(encode_command(verb, *ordered[start : start + MAX_NAMES_PER_COMMAND]))
        self.requested_channels = set(self.wanted_channels)
        self.requested_patterns = set(self.wanted_patterns)
        return b"".join(out)

    def confirm(self, kind: bytes, name: bytes) -> None:
        """Apply a subscribe/unsubscribe confirmation read from the reply stream."""
        if kind == b"subscribe":
            self.confirmed_channels.add(name)
        elif kind == b"unsubscribe":
            self.confirmed_channels.discard(name)
        elif kind == b"psubscribe":
            self.confirmed_patterns[name] = _unescape_pattern(name)
            self._owner.clear()
        elif kind == b"punsubscribe":
            self.confirmed_patterns.pop(name, None)
            self._owner.clear()

    def owns(self, pattern: bytes, channel: bytes) -> bool:
        """Whether the ``pmessage`` copy of ``channel`` via ``pattern`` is the one to deliver."""
        if channel in self.confirmed_channels:
            return False
        patterns = self.confirmed_patterns
        if len(patterns) == 1:
            return True
        owner = self._owner.get(channel, b"")
        if owner == b"":
            best: bytes | None = None
            best_len = -1
            for candidate, prefix in patterns.items():
                if len(prefix) > best_len and channel.startswith(prefix):
                    best, best_len = candidate, len(prefix)
            if len(self._owner) >= _OWNER_CACHE_MAX:
                self._owner.clear()
            self._owner[channel] = owner = best
        return owner == pattern
