"""What a value read from Redis must be before the bridge relays it.

A Redis value is ``REDIS_VERSION``, the relaying node id, then the envelope
header and payload (:func:`..protocol.envelope.frame_to_redis`). Both modes
read values the same way: :class:`ValueCheck` drops our own (the local
delivery happened already), malformed ones and those from an
``ignore_hosts`` host, and counts each; history reads use
:meth:`ValueCheck.readable` (own values included, nothing counted).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..protocol.envelope import HEADER, NODE_ID_BYTES, REDIS_VERSION, VERSION

__all__ = ["MIN_VALUE", "STAMP_OFFSET", "ValueCheck", "origin_host"]

#: Where the envelope header starts in a Redis value (after version and node id).
STAMP_OFFSET: Final = 1 + NODE_ID_BYTES
#: The shortest Redis value that can hold a message.
MIN_VALUE: Final = STAMP_OFFSET + HEADER.size


def origin_host(value: bytes) -> bytes:
    """The origin host of a Redis value (already length-checked)."""
    n_origin = value[STAMP_OFFSET + 3]
    n_host = value[STAMP_OFFSET + 4]
    start = MIN_VALUE + n_origin
    return value[start : start + n_host]


class ValueCheck:
    """Which Redis values are relayed: not our own, well formed, not from an
    ignored host. Counts what it turns away (``own``, ``rejected``, ``ignored``)."""

    __slots__ = ("_ignore", "_stamp", "ignored", "own", "rejected")

    def __init__(self, stamp: bytes, ignore_hosts: Iterable[str]) -> None:
        self._stamp = stamp
        self._ignore = frozenset(h.encode("utf-8") for h in ignore_hosts) or None
        self.own = 0
        self.rejected = 0
        self.ignored = 0

    def admit(self, value: bytes) -> bool:
        """True to relay ``value``; otherwise it is counted and dropped."""
        if value.startswith(self._stamp):
            self.own += 1
            return False
        if len(value) < MIN_VALUE or value[0] != REDIS_VERSION or value[STAMP_OFFSET] != VERSION:
            self.rejected += 1
            return False
        if self._ignore is not None and origin_host(value) in self._ignore:
            self.ignored += 1
            return False
        return True

    def readable(self, value: bytes) -> bool:
        """Well formed and not from an ignored host, own values included; not counted
        (history)."""
        if len(value) < MIN_VALUE or value[0] != REDIS_VERSION or value[STAMP_OFFSET] != VERSION:
            return False
        return self._ignore is None or origin_host(value) not in self._ignore
