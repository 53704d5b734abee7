"""Typed configuration shared by the bridge (plugin and CLI) and the clients.

Options arrive as strings (circus plugin options, ``CIRCUS_EVENTS_*``
variables, CLI flags). Each is parsed once, here, into a frozen config; a bad
value raises :class:`ConfigError` naming the key. This is the only module
that reads the environment, and only when asked (:func:`environ_options`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from ._exceptions import ChannelError, ConfigError
from .protocol.budget import MIN_FRAMES, min_budget
from .protocol.envelope import NODE_ID_BYTES
from .protocol.topics import validate_worker_id

__all__ = [
    "DEFAULT_BUFFER_MAX_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_PATTERNS",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_NAMESPACE",
    "ENV_PREFIX",
    "BridgeConfig",
    "SocketPaths",
    "default_dir",
    "environ_options",
    "socket_paths",
]

ENV_PREFIX: Final = "CIRCUS_EVENTS_"
DEFAULT_NAMESPACE: Final = "default"
#: 1 MiB: far above an event, far below what hurts Redis or a worker.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: Outbound buffer while Redis is away: 64 MiB (~500k events of 100 bytes).
DEFAULT_BUFFER_MAX_BYTES: Final = 64 * 1024 * 1024
#: Stream mode: entries kept per stream (XADD MAXLEN ~).
DEFAULT_RETENTION: Final = 100_000
DEFAULT_STATS_INTERVAL: Final = 5.0
#: Per local subscriber: past this many queued messages a stuck worker loses
#: messages (and learns of it through sequence gaps) while the others go on.
#: Frames (one message, or a batch of at most 16 KiB): 20k x ~150 B is 3 MB
#: per stuck worker, 20k full batches 320 MB.
DEFAULT_SUBSCRIBER_HWM: Final = 20_000
#: Per local subscriber, in bytes: the most the bridge holds for one worker
#: that does not read, the frame being written out included (the kernel's
#: socket buffer, ~208 KiB, comes on top). It lowers the subscriber's
#: high-water mark to ``subscriber_max_bytes // (max_message_bytes + 4 KiB) - 1``
#: frames. Left unset it allows the full ``subscriber_hwm`` frames of the
#: largest size (20 GiB with the defaults), because fewer frames lose events
#: for healthy workers in bursts: with 1,019 frames (1 GiB, 1 MiB messages),
#: 9 subscribers x 10,000 small events flat out lost a few, and a stream
#: replay after a Redis restart lost ticks; with 20,000 neither did. Set it
#: with a smaller ``max_message_bytes`` to keep the frames (64 KiB messages,
#: 1 GiB: 15,419 frames). This is the note for ``subscriber_max_bytes``.
#: Frames may exceed max_message_bytes by this much (see bridge.local).
FRAME_SLACK: Final = 4096
#: Distinct subscriptions (exact channels, pattern prefixes and one inbox per
#: worker) per bridge; each is a Redis SUBSCRIBE or PSUBSCRIBE.
DEFAULT_MAX_SUBSCRIPTIONS: Final = 10_000
#: Distinct pattern prefixes among them: every Redis PUBLISH is matched against
#: every PSUBSCRIBE pattern (5,000 of them took Redis from 211k to 12k PUBLISH/s).
DEFAULT_MAX_PATTERNS: Final = 256
#: AF_UNIX paths are limited to 107 bytes on Linux.
MAX_IPC_PATH: Final = 107

Mode = Literal["pubsub", "stream"]


def default_dir() -> str:
    """The socket directory both sides use when none is configured."""
    return f"/tmp/circus-events-{os.getuid()}"


def default_host() -> str:
    return socket.gethostname() or "localhost"


@dataclasses.dataclass(frozen=True, slots=True)
class SocketPaths:
    """Where a namespace's bridge sockets live."""

    directory: str
    pull: str
    pub: str
    control: str
    lock: str

    def endpoint(self, path: str) -> str:
        return "ipc://" + path


def socket_paths(directory: str, namespace: str) -> SocketPaths:
    """The socket paths of one namespace; refuses paths too long for AF_UNIX."""
    base = os.path.join(directory, namespace)
    paths = SocketPaths(
        directory=base,
        pull=os.path.join(base, "in.sock"),
        pub=os.path.join(base, "out.sock"),
        control=os.path.join(base, "ctl.sock"),
        lock=os.path.join(base, "bridge.lock"),
    )
    longest = max(len(p.encode()) for p in (paths.pull, paths.pub, paths.control))
    if longest > MAX_IPC_PATH:
        raise ConfigError(
            "dir",
            f"{directory!r} is too long: socket paths would be {longest} bytes, "
            f"the system limit is {MAX_IPC_PATH}; choose a shorter directory",
        )
    return paths


def _parse_int(key: str, value: object, minimum: int = 0) -> int:
    try:
        number = int(str(value).replace("_", "")) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(key, f"{value!r} is not a whole number") from None
    if number < minimum:
        raise ConfigError(key, f"{number} is below the minimum of {minimum}")
    return number


def _parse_float(key: str, value: object, minimum: float = 0.0) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a number") from None
    if not number >= minimum:
        raise ConfigError(key, f"{number} is below the minimum of {minimum}")
    return number


def _parse_list(value: object) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _check_namespace(value: object) -> str:
    text = str(value)
    if not text or not all(c.isalnum() or c in "-_." for c in text) or text.startswith("."):
        raise ConfigError(
            "namespace",
            f"{text!r} must be letters, digits, '-', '_' or '.' (not starting with '.')",
        )
    return text


def _check_redis_url(value: object) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    url = str(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "redis_url", f"scheme {parts.scheme!r} is not redis://, rediss:// or unix://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("redis_url", "the URL names no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError("redis_url", "the port is not a number from 0 to 65535") from None
    return url


@dataclasses.dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Everything a bridge needs; build with :meth:`from_options`."""

    dir: str = dataclasses.field(default_factory=default_dir)
    namespace: str = DEFAULT_NAMESPACE
    host: str = dataclasses.field(default_factory=default_host)
    redis_url: str | None = None
    mode: Mode = "pubsub"
    buffer_max_bytes: int = DEFAULT_BUFFER_MAX_BYTES
    retention: int = DEFAULT_RETENTION
    #: Stream mode: the namespace's stream is split by channel hash into this many streams.
    stream_shards: int = 1
    signing_key: str | None = None
    ignore_hosts: tuple[str, ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    stats_interval: float = DEFAULT_STATS_INTERVAL
    group: str | None = None
    redis_prefix: str = "circus-events"
    #: Messages queued per local subscriber before it loses some (a gap).
    subscriber_hwm: int = DEFAULT_SUBSCRIBER_HWM
    #: Bytes the bridge may hold per local subscriber (see ``protocol.budget``);
    #: 0: not set, ``subscriber_hwm`` frames of the largest size.
    subscriber_max_bytes: int = 0
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_patterns: int = DEFAULT_MAX_PATTERNS

    def __post_init__(self) -> None:
        socket_paths(self.dir, self.namespace)  # refuse paths too long for AF_UNIX now
        frame = self.max_message_bytes + FRAME_SLACK
        if not self.subscriber_max_bytes:
            object.__setattr__(self, "subscriber_max_bytes", (self.subscriber_hwm + 1) * frame)
        least = min_budget(frame, self.subscriber_hwm)
        if self.subscriber_max_bytes < least:
            raise ConfigError(
                "subscriber_max_bytes",
                f"{self.subscriber_max_bytes} is below {least}, room for "
                f"{min(MIN_FRAMES, self.subscriber_hwm)} frames of max_message_bytes + 4 KiB "
                "(lower max_message_bytes for a smaller budget)",
            )

    @property
    def paths(self) -> SocketPaths:
        return socket_paths(self.dir, self.namespace)

    @property
    def node_id(self) -> bytes:
        """Stable per host: a restarted bridge still recognises its own messages."""
        return hashlib.blake2b(self.host.encode(), digest_size=NODE_ID_BYTES).digest()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> BridgeConfig:
        """Parse string (or typed) options; unknown keys and bad values raise ConfigError."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(unknown[0], f"unknown option (known: {', '.join(sorted(fields))})")
        values: dict[str, Any] = {}
        for key, raw in options.items():
            if raw is None:
                continue
            values[key] = _PARSERS.get(key, lambda v: str(v))(raw)
        return cls(**values)


def _check_mode(value: object) -> Mode:
    text = str(value).strip().lower()
    if text == "pubsub":
        return "pubsub"
    if text == "stream":
        return "stream"
    raise ConfigError("mode", f"{value!r} is not 'pubsub' or 'stream'")


def _check_host(value: object) -> str:
    try:
        validate_worker_id(str(value))
    except ChannelError as exc:
        raise ConfigError("host", str(exc)) from None
    return str(value)


_PARSERS: Final[dict[str, Any]] = {
    "dir": lambda v: os.path.abspath(os.path.expanduser(str(v))),
    "namespace": _check_namespace,
    "host": _check_host,
    "redis_url": _check_redis_url,
    "mode": _check_mode,
    "buffer_max_bytes": lambda v: _parse_int("buffer_max_bytes", v, 0),
    "retention": lambda v: _parse_int("retention", v, 1),
    "stream_shards": lambda v: _parse_int("stream_shards", v, 1),
    "signing_key": lambda v: str(v) or None,
    "ignore_hosts": _parse_list,
    "max_message_bytes": lambda v: _parse_int("max_message_bytes", v, 1024),
    "stats_interval": lambda v: _parse_float("stats_interval", v, 0.1),
    "group": lambda v: str(v) or None,
    "redis_prefix": lambda v: str(v),
    "subscriber_hwm": lambda v: _parse_int("subscriber_hwm", v, 1),
    "subscriber_max_bytes": lambda v: _parse_int("subscriber_max_bytes", v, 4096),
    "max_subscriptions": lambda v: _parse_int("max_subscriptions", v, 1),
    "max_patterns": lambda v: _parse_int("max_patterns", v, 0),
}

#: Variables read by both the bridge and the clients, and the option each sets.
ENVIRONMENT: Final = {
    "CIRCUS_EVENTS_DIR": "dir",
    "CIRCUS_EVENTS_NAMESPACE": "namespace",
    "CIRCUS_EVENTS_REDIS_URL": "redis_url",
    "CIRCUS_EVENTS_MODE": "mode",
    "CIRCUS_EVENTS_HOST": "host",
    "CIRCUS_EVENTS_WORKER": "worker",
    "CIRCUS_EVENTS_MAX_MESSAGE_BYTES": "max_message_bytes",
}


def environ_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The options set by ``CIRCUS_EVENTS_*`` variables (empty ones are ignored)."""
    env = os.environ if environ is None else environ
    return {key: env[name] for name, key in ENVIRONMENT.items() if env.get(name)}
