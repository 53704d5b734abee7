"""The Redis lease of a role: one Lua script, run by the bridge that holds it.

One key per role (``<prefix>:<namespace>:@lease:{cluster:<role>}``, or
``{host:<host>:<role>}`` for ``scope="host"``) holds
``owner TAB token TAB host TAB worker`` with the lease's expiry (``PX``):
``owner`` is one bridge process (a random id per run: a restarted bridge
waits for its old lease like any other). Next to it, ``@fence:{...}``
counts the terms (``INCR`` on every new term: the fencing token) and
``@lease-init:{...}`` holds the ``run_id`` of the Redis process that
last started a term for the role.

* ``acquire``: take the lease if it is free or already ours (a new term:
  a new token), else say who holds it and for how long.
* ``renew``: extend the lease if it is ours with that token.
* ``release``: drop the lease if it is ours.

When the marker is not this process's ``run_id`` (a new Redis, one that
restarted, lost its data or came back from an older snapshot, a promoted
replica: in each a holder elsewhere may still believe it leads) the first
``acquire`` blocks the role for one lease if it is free (an ownerless value
with the ttl) and moves the counter above any token issued before: Redis's
clock in milliseconds. A marker alone would survive a restore from an old
snapshot beside a counter older than tokens already handed out.
Keys share a hash tag, so the script runs on Redis Cluster too.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LEASE_SCRIPT", "lease_keys", "parse_lease_value"]

LEASE_SCRIPT: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local op = ARGV[1]
local value = redis.call('GET', KEYS[1])
local owner, token = nil, nil
if value then
  local a = string.find(value, '\\t', 1, true)
  local b = a and string.find(value, '\\t', a + 1, true)
  if a and b then
    owner = string.sub(value, 1, a - 1)
    token = string.sub(value, a + 1, b - 1)
  end
end
if op == 'renew' then
  if owner == ARGV[2] and token == ARGV[4] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 1
  end
  return 0
end
if op == 'release' then
  if owner == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?'
if redis.call('GET', KEYS[3]) ~= run then
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if current < floor then
    redis.call('SET', KEYS[2], string.format('%.0f', floor))
  end
  redis.call('SET', KEYS[3], run)
  if not value then
    value = '\\t0\\t\\t'
    redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
    return {0, value, tonumber(ARGV[3])}
  end
end
if value and owner ~= ARGV[2] then
  return {0, value, redis.call('PTTL', KEYS[1])}
end
local new = redis.call('INCR', KEYS[2])
value = ARGV[2] .. '\\t' .. string.format('%.0f', new) .. '\\t' .. ARGV[5]
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
return {new, value, tonumber(ARGV[3])}
"""


def lease_keys(base: bytes, scope: str, host: str, role: str) -> tuple[bytes, bytes, bytes]:
    """The lease, counter and marker keys of a role (``base``: ``<prefix>:<namespace>:``)."""
    tag = ("cluster:" + role if scope == "cluster" else f"host:{host}:{role}").encode("utf-8")
    tagged = b"{" + tag + b"}"
    return base + b"@lease:" + tagged, base + b"@fence:" + tagged, base + b"@lease-init:" + tagged


def parse_lease_value(value: bytes | str) -> tuple[str, int, str, str]:
    """``(owner, token, host, worker)`` of a lease value (empty fields if malformed)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    parts = text.split("\t")
    if len(parts) != 4 or not parts[1].isdigit():
        return "", 0, "", ""
    return parts[0], int(parts[1]), parts[2], parts[3]
