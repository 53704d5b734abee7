"""How a failed Redis connection is told: one wording for the bridge and the CLI.

The bridge connects with its own RESP client (:mod:`.resp`); ``status --all``
and ``leaders`` connect with redis-py (:func:`.presence.redis_py_client`).
Both meet the same failures (no password, a wrong one, a port that is not
Redis, a Redis that does not answer), so both say the same thing here,
naming the URL with its password masked, and neither quotes a client
library's internals (redis-py 8 answers a missing password with "HELLO must
be called with the client already authenticated ...").
"""

from __future__ import annotations

from typing import Final

from .._redis_url import RedisAddress

__all__ = ["not_redis", "reply_head"]

#: Characters of a non-Redis server's first line shown in :func:`not_redis`.
HEAD_CHARS: Final = 24


def reply_head(data: bytes) -> str:
    """The start of what a server sent, printable and short, for :func:`not_redis`."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")[:HEAD_CHARS]
    text = "".join(c if c.isprintable() else "?" for c in line.decode("latin-1"))
    return text + ("..." if len(line) < len(data) else "")


def not_redis(address: RedisAddress, head: str) -> str:
    """A server that answered, but not in Redis' protocol: usually the wrong port."""
    return f"{address.display} answered something that is not Redis (it began with {head!r})"
