"""Where a bridge lives in Redis, and how to read every bridge's presence.

Each bridge keeps ``<redis_prefix>:<namespace>:@presence:<host>`` set to a
JSON record (identity, its status, its Redis status, heartbeat round trip)
with a TTL of :data:`PRESENCE_TTL_FACTOR` stats intervals, renewed every
interval and deleted on a clean close: a host that vanishes without closing
drops out of :func:`read_cluster_status` within three intervals.
"""

from __future__ import annotations

import json
from typing import Any, Final

from .._config import BridgeConfig
from .._exceptions import BridgeError, ConfigError
from .resp import parse_redis_url
from .subscriptions import glob_escape

__all__ = [
    "PRESENCE_TTL_FACTOR",
    "RedisNames",
    "read_cluster_status",
    "redis_names",
]

#: Presence records expire after this many stats intervals without renewal.
PRESENCE_TTL_FACTOR: Final = 3


class RedisNames:
    """The Redis channel and key names of one bridge."""

    __slots__ = ("base", "heartbeat", "heartbeat_prefix", "presence", "presence_prefix")

    def __init__(self, config: BridgeConfig) -> None:
        #: Prefix of every channel: ``<redis_prefix>:<namespace>:``.
        self.base = f"{config.redis_prefix}:{config.namespace}:".encode()
        #: Prefix of every bridge's heartbeat channel in the namespace.
        self.heartbeat_prefix = self.base + b"@hb:"
        #: This bridge's heartbeat channel (by node id, like its echo stamp).
        self.heartbeat = self.heartbeat_prefix + config.node_id.hex().encode()
        self.presence_prefix = self.base + b"@presence:"
        #: This bridge's presence key.
        self.presence = self.presence_prefix + config.host.encode("utf-8")


def redis_names(config: BridgeConfig) -> RedisNames:
    """The Redis names a bridge with ``config`` uses."""
    return RedisNames(config)


def read_cluster_status(config: BridgeConfig, *, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every live bridge's presence record in ``config``'s namespace, sorted by host.

    Synchronous, with its own short-lived redis-py connection: meant for
    ``circus-events status --all`` (from a loop, call it through
    ``asyncio.to_thread``). Raises :class:`BridgeError` if Redis cannot be read.
    """
    if not config.redis_url:
        return []
    import redis  # noqa: PLC0415 - only the status command needs redis-py

    pattern = glob_escape(RedisNames(config).presence_prefix) + b"*"
    try:
        client = redis.Redis.from_url(
            config.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        with client:
            keys = sorted(client.scan_iter(match=pattern, count=1000))
            values = client.mget(keys) if keys else []
    except redis.RedisError as exc:
        raise BridgeError(f"{_redacted(config.redis_url)}: {exc}") from exc
    records: list[dict[str, Any]] = []
    for value in values:
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            record = json.loads(value)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    records.sort(key=lambda r: str(r.get("host", "")))
    return records


def _redacted(url: str) -> str:
    try:
        return parse_redis_url(url).display
    except ConfigError:
        return "the configured Redis URL"
