"""Where a bridge lives in Redis, and how to read every bridge's presence.

Each bridge keeps ``<redis_prefix>:<namespace>:@presence:<host>`` set to a
JSON record (identity, its status, its Redis status, heartbeat round trip)
with a TTL of :data:`PRESENCE_TTL_FACTOR` stats intervals, renewed every
interval and deleted on a clean close: a host that vanishes without closing
drops out of :func:`read_cluster_status` within three intervals.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from collections.abc import Callable
from typing import Any, Final

from .._config import BridgeConfig
from .._exceptions import BridgeError
from .._redis_url import RedisAddress
from .redis_errors import redis_py_failure
from .subscriptions import glob_escape

__all__ = [
    "PRESENCE_TTL_FACTOR",
    "RedisNames",
    "presence_record",
    "read_cluster_status",
    "redis_names",
    "redis_py_client",
]

#: Presence records expire after this many stats intervals without renewal.
PRESENCE_TTL_FACTOR: Final = 3


def _version() -> str:
    try:
        return importlib.metadata.version("circus-events")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def presence_record(
    config: BridgeConfig,
    status_provider: Callable[[], dict[str, Any]] | None,
    *,
    started: float,
    heartbeat_rtt_ms: float | None,
    redis: dict[str, Any],
) -> dict[str, Any]:
    """The JSON-able record of one bridge (see the module docstring).

    The ``status_provider()`` output (the bridge's own status) at the top
    level, so a record reads like a local ``status``; then the bridge's
    identity, its ``redis`` status and ``heartbeat_rtt_ms`` over it.
    """
    record: dict[str, Any] = {}
    if status_provider is not None:
        try:
            record.update(status_provider())
        except Exception as exc:
            record["last_error"] = f"bridge status unavailable: {exc!r}"
    record.setdefault("uptime", time.monotonic() - started)
    record.update(
        host=config.host,
        node_id=config.node_id.hex(),
        namespace=config.namespace,
        mode=config.mode,  # the local status says it too: status --all showed "mode ?"
        version=_version(),
        pid=os.getpid(),
        time=time.time(),
        stats_interval=config.stats_interval,
        heartbeat_rtt_ms=heartbeat_rtt_ms,
        redis=redis,
    )
    return record


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
    ``asyncio.to_thread``). Raises :class:`BridgeError` if Redis cannot be read;
    its message (:func:`.redis_errors.redis_py_failure`) says what failed, as the
    bridge would, and shows the URL with the password masked.
    """
    address = config.redis_address
    if address is None:
        return []
    import redis  # noqa: PLC0415 - only the status command needs redis-py

    pattern = glob_escape(RedisNames(config).presence_prefix) + b"*"
    try:
        with redis_py_client(address, timeout) as client:
            keys = sorted(client.scan_iter(match=pattern, count=1000))
            values = client.mget(keys) if keys else []
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BridgeError(redis_py_failure(address, exc, timeout)) from None
    records: list[dict[str, Any]] = []
    for value in values:
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            record = json.loads(value)
        except (ValueError, RecursionError):  # anyone who can write to Redis wrote it
            continue
        if isinstance(record, dict):
            records.append(record)
    records.sort(key=lambda r: str(r.get("host", "")))
    return records


def redis_py_client(address: RedisAddress, timeout: float) -> Any:
    """A redis-py client for ``address``, from its fields (never ``from_url``).

    redis-py reads URLs its own way (unknown parameters pass, ``?password=``
    counts); built from the parsed address it connects exactly where the
    bridge does. No retries: redis-py 8 retries 3 times with backoff by
    default, which made a 2 s ``timeout`` take 25 s against a silent port.
    """
    import redis  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    kwargs: dict[str, Any] = {
        "db": address.db,
        "username": address.username,
        "password": address.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if address.path is not None:
        kwargs["unix_socket_path"] = address.path
    else:
        kwargs.update(host=address.host, port=address.port)
    if address.tls:
        kwargs.update(
            ssl=True,
            ssl_cert_reqs=address.ssl_cert_reqs,
            ssl_check_hostname=address.verifies_hostname,
            ssl_ca_certs=address.ssl_ca_certs,
            ssl_ca_path=address.ssl_ca_path,
            ssl_certfile=address.ssl_certfile,
            ssl_keyfile=address.ssl_keyfile,
        )
    return redis.Redis(**kwargs)
