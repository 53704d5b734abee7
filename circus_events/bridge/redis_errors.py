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

import re
from typing import Final

from .._redis_url import RedisAddress

__all__ = [
    "AUTH_ERRORS",
    "auth_failure",
    "is_auth_error",
    "not_redis",
    "redis_py_failure",
    "reply_head",
]

#: Error texts that mean the credentials are wrong or missing.
AUTH_ERRORS: Final = (
    "WRONGPASS",
    "NOAUTH",
    "ERR INVALID PASSWORD",
    "INVALID USERNAME",
    "HELLO MUST BE CALLED WITH THE CLIENT ALREADY AUTHENTICATED",  # redis-py 8 (RESP3)
)
#: Characters of a non-Redis server's first line shown in :func:`not_redis`.
HEAD_CHARS: Final = 24
_REDIS_PY_HEAD: Final = re.compile(r'got "(.*)" as reply type byte')


def is_auth_error(text: str) -> bool:
    """Whether an error (reply) text says the credentials are wrong or missing."""
    upper = text.upper()
    return any(marker in upper for marker in AUTH_ERRORS) or "AUTH" in upper.split(" ", 2)[:2]


def auth_failure(address: RedisAddress, detail: str) -> str:
    """A refused login: a URL without credentials needs a password, not a retry."""
    if address.username is None and address.password is None:
        return (
            f"authentication required: {address.display} asks for a password and the URL "
            "has none; set it in the URL (redis://:PASSWORD@host:port/db)"
        )
    return f"authentication failed at {address.display}: {detail}"


def reply_head(data: bytes) -> str:
    """The start of what a server sent, printable and short, for :func:`not_redis`."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")[:HEAD_CHARS]
    text = "".join(c if c.isprintable() else "?" for c in line.decode("latin-1"))
    return text + ("..." if len(line) < len(data) else "")


def not_redis(address: RedisAddress, head: str) -> str:
    """A server that answered, but not in Redis' protocol: usually the wrong port."""
    return f"{address.display} answered something that is not Redis (it began with {head!r})"


def redis_py_failure(address: RedisAddress, exc: Exception, timeout: float) -> str:
    """A redis-py error as the bridge would say it (its text may quote the password)."""
    import redis  # noqa: PLC0415 - only the commands that use redis-py come here

    text = str(exc)
    if address.password:
        text = text.replace(address.password, "***")
    if isinstance(exc, redis.AuthenticationError) or is_auth_error(text):
        return auth_failure(address, text)
    if isinstance(exc, redis.exceptions.InvalidResponse):
        match = _REDIS_PY_HEAD.search(text)
        return not_redis(address, match.group(1) + "..." if match else text)
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return f"{address.display} did not answer within {timeout:g}s"
    if isinstance(exc, redis.ConnectionError | OSError):
        return f"cannot connect to {address.display}: {text}"
    return f"{address.display}: {text}"
