"""Fencing: make a stale leader's writes harmless, with the token of its term.

A lease cannot stop a leader that was paused (GC, SIGSTOP, a swapped-out VM)
between checking ``is_leader`` and writing: by the time the write lands, a
successor may lead. The store must refuse it. Every term has a fencing
token (``leadership.token``) that only grows for a role; a guarded write
carries it, and the store accepts it only if it is at least the highest
token it has seen (the pattern from Martin Kleppmann's "How to do
distributed locking").

For Redis, :data:`FENCED_WRITE_SCRIPT` does the check and the write in one
script::

    import redis
    from circus_events.fencing import fenced_write

    r = redis.Redis()
    with bus.leader("billing") as lead:
        lead.wait()
        if lead.is_leader and not fenced_write(r, "billing:last-run", "done", lead.token):
            ...  # refused: someone with a newer term wrote; this worker no longer leads

Elsewhere, store the token next to the data and compare in the same
transaction (SQL: ``UPDATE ... WHERE fence_token <= :token``).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["FENCED_WRITE_SCRIPT", "fenced_write"]

#: KEYS[1]: the fence (highest token seen), KEYS[2]: the data key.
#: ARGV[1]: token, ARGV[2]: value, ARGV[3]: ``set`` or ``append`` (RPUSH).
#: Returns 1 if written, 0 if the token is older than the fence.
FENCED_WRITE_SCRIPT: Final = """
local token = tonumber(ARGV[1])
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
if token == nil or token < fence then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] == 'append' then
  redis.call('RPUSH', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""


def fenced_write(
    client: Any,
    key: str,
    value: str | bytes,
    token: int,
    *,
    fence_key: str | None = None,
    append: bool = False,
) -> bool:
    """Write ``value`` at ``key`` (``SET``, or ``RPUSH`` with ``append``) with a
    redis-py ``client``, only if ``token`` is at least the highest token seen
    at ``fence_key`` (default ``<key>:fence``). True if written."""
    fence = fence_key if fence_key is not None else f"{key}:fence"
    mode = "append" if append else "set"
    return bool(client.eval(FENCED_WRITE_SCRIPT, 2, fence, key, token, value, mode))
