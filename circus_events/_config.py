"""Typed configuration shared by the bridge (plugin and CLI) and the clients.

Options arrive as strings (circus plugin options, ``CIRCUS_EVENTS_*``
variables, CLI flags). Each is parsed once, here, into a frozen config; a bad
value raises :class:`ConfigError` naming the key. This is the only module
that reads the environment, and only when asked (:func:`environ_options`).

Every field is checked when a :class:`BridgeConfig` is made, before a bridge
binds anything: text options by one function each (``_PARSERS``), numbers
by one line each in :data:`NUMERIC_OPTIONS` (kind, minimum, maximum: whole,
finite, in range), the Redis URL by :mod:`._redis_url` with its TLS files
read. :func:`relabel` names the key the way the user gave it (``--flag``,
``CIRCUS_EVENTS_VARIABLE``). A new numeric option is a field, a line in
:data:`NUMERIC_OPTIONS` and (for the CLI) a flag.
"""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from ._exceptions import ChannelError, ConfigError
from ._redis_url import RedisAddress, check_tls_files, parse_redis_url
from .protocol.backlog import DEFAULT_BACKLOG_BYTES
from .protocol.budget import MIN_FRAMES, min_budget
from .protocol.chunks import LOCAL_FRAME_MAX
from .protocol.envelope import NODE_ID_BYTES
from .protocol.topics import validate_worker_id

__all__ = [
    "DEFAULT_BUFFER_MAX_BYTES",
    "DEFAULT_HOLD_MAX_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_PATTERNS",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_PUBLISHER_MAX_BYTES",
    "DEFAULT_REJOIN_TIMEOUT",
    "ENV_PREFIX",
    "NUMERIC_OPTIONS",
    "BridgeConfig",
    "NumberSpec",
    "SocketPaths",
    "default_dir",
    "environ_labels",
    "environ_options",
    "parse_number",
    "relabel",
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
#: socket buffer, ~208 KiB, comes on top). Frames to subscribers are at most
#: 24 KiB (``protocol.chunks``: larger messages go in pieces), so it lowers the
#: subscriber's high-water mark to ``subscriber_max_bytes // 24 KiB - 1``
#: frames when that is below ``subscriber_hwm``. 512 MiB keeps the 20,000
#: frames that healthy workers need in bursts (with 1,019 frames, 9
#: subscribers x 10,000 small events flat out lost a few, and a stream replay
#: after a Redis restart lost ticks) and costs at most 469 MiB per stuck worker.
DEFAULT_SUBSCRIBER_MAX_BYTES: Final = 512 * 1024 * 1024
#: Per local publisher (each worker's PUSH pipe into the bridge), in bytes:
#: what the bridge holds for a worker whose frames it has not read yet. The
#: PULL high-water mark becomes ``publisher_max_bytes // (max_message_bytes +
#: 4 KiB) - 1`` frames (254 with the defaults, at most ``PULL_HWM``): past it
#: the worker's own send queue fills, then ``publish`` times out
#: (backpressure), never a silent loss. 255 frames still hold ~65,000 batched
#: messages. Measured: 16- and 30-frame pipes carried 100k small, 3,000 x
#: 512 KiB and 100k garbage frames without a stall.
DEFAULT_PUBLISHER_MAX_BYTES: Final = 256 * 1024 * 1024
#: Frames may exceed max_message_bytes by this much (see bridge.local).
FRAME_SLACK: Final = 4096


def local_frame_max(max_message_bytes: int) -> int:
    """The largest frame a local subscriber is sent: larger ones go in pieces
    (``protocol.chunks``), so a subscriber's pipe is bounded by its frame count."""
    return min(LOCAL_FRAME_MAX, max_message_bytes + FRAME_SLACK)


#: Distinct subscriptions (exact channels, pattern prefixes and one inbox per
#: worker) per bridge; each is a Redis SUBSCRIBE or PSUBSCRIBE.
DEFAULT_MAX_SUBSCRIPTIONS: Final = 10_000
#: Distinct pattern prefixes among them: every Redis PUBLISH is matched against
#: every PSUBSCRIBE pattern (5,000 of them took Redis from 211k to 12k PUBLISH/s).
DEFAULT_MAX_PATTERNS: Final = 256
#: A starting bridge holds local delivery until the workers of the previous
#: one are back, this many seconds at most (``protocol.rejoin``; 0: no hold).
DEFAULT_REJOIN_TIMEOUT: Final = 5.0
#: ...and this many bytes of frames at most (then it lets them out early).
DEFAULT_HOLD_MAX_BYTES: Final = 64 * 1024 * 1024
#: A minute: a worker that takes longer to reconnect is not coming back soon.
MAX_REJOIN_TIMEOUT: Final = 60.0
#: The bridge stops reading local publishers while a live subscriber is this
#: many bytes behind (``protocol.pacing``; 0: never), and reads again once it is
#: within half. At most a quarter of ``subscriber_max_bytes`` is used. 32 MiB
#: is 64 messages of 512 KiB: a subscriber joining them at ~250 MB/s reads
#: that in ~0.13 s, so pauses are short and nothing reaches its high-water mark.
DEFAULT_PACE_BYTES: Final = 32 * 1024 * 1024
#: A subscriber that reads nothing new for this long while it is behind is
#: stuck: it paces nobody and loses at its high-water mark (told by gaps).
DEFAULT_STALL_TIMEOUT: Final = 1.0
#: Bounds of stall_timeout: a loop turn at the least, a minute of publishers held at most.
MIN_STALL_TIMEOUT: Final = 0.01
MAX_STALL_TIMEOUT: Final = 60.0
#: AF_UNIX paths are limited to 107 bytes on Linux.
MAX_IPC_PATH: Final = 107
#: Joins the keys of a ConfigError that blames two options together.
KEYS_JOINED: Final = " and "

# The largest value each numeric option takes (a bigger one is a typo or an attack,
# and some would overflow what they are handed to: a C int in libzmq, a Redis EX).
#: 64 MiB: Redis refuses values over 512 MB, and every queue that holds messages
#: (per subscriber, the outbound buffer) multiplies this; bigger data belongs elsewhere.
MAX_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: The smallest max_message_bytes: the envelope header and a short payload must fit.
MIN_MAX_MESSAGE_BYTES: Final = 1024
#: 4 GiB: the outbound buffer is memory held while Redis is away; more is rarely spare.
MAX_BUFFER_MAX_BYTES: Final = 4 * 1024**3
#: Stream mode: 100 million entries per stream, about 20 GB of Redis memory at 200 B each.
MAX_RETENTION: Final = 100_000_000
#: Stream mode: every bridge reads every shard in one XREAD; 1024 streams is already a lot.
MAX_STREAM_SHARDS: Final = 1024
#: Presence records are written at most ten times a second...
MIN_STATS_INTERVAL: Final = 0.1
#: ...and at least once an hour: a record lives three intervals, so a dead host
#: stays in ``status --all`` for at most three hours.
MAX_STATS_INTERVAL: Final = 3600.0
#: Frames per local subscriber. libzmq counts in a C int; a million frames of up to
#: 16 KiB is already 16 GiB for one stuck worker, far past any useful queue.
MAX_SUBSCRIBER_HWM: Final = 1_000_000
#: Two frames of the smallest messages (one queued, one in flight); the real
#: floor depends on max_message_bytes and subscriber_hwm (checked with them).
MIN_SUBSCRIBER_MAX_BYTES: Final = 2 * (1024 + 4096)
#: 64 GiB: more than a bridge's host should ever give one worker; past it the
#: budget bounds nothing (and 99999999999 is a typo, not a budget).
MAX_SUBSCRIBER_MAX_BYTES: Final = 64 * 1024**3
#: 1 MiB: below that a publisher's pipe holds a frame or two of small messages.
MIN_PUBLISHER_MAX_BYTES: Final = 1024 * 1024
#: A million Redis subscriptions from one bridge is already far past sane.
MAX_MAX_SUBSCRIPTIONS: Final = 1_000_000
#: Each pattern is a PSUBSCRIBE that Redis matches against every PUBLISH:
#: 10,000 of them cut an unrelated channel's PUBLISH rate ~400x (issue 11).
MAX_MAX_PATTERNS: Final = 10_000
#: Redis key and channel names start with the prefix; keep it short and readable.
MAX_REDIS_PREFIX_CHARS: Final = 128

Mode = Literal["pubsub", "stream"]


#: root's default socket folder: only root can create it in ``/run``.
ROOT_DEFAULT_DIR: Final = "/run/circus-events"


def default_dir(environ: Mapping[str, str] | None = None) -> str:
    """The socket folder both sides use when none is configured.

    A folder no other user can create first: ``/run/circus-events`` for
    root, ``$XDG_RUNTIME_DIR/circus-events`` for other users (a per-user
    ``0700`` folder). Without ``XDG_RUNTIME_DIR``: ``/tmp/circus-events-<uid>``,
    which another user *can* create first; the bridge then refuses it (see
    ``_sockdir``) rather than use it. Workers of another uid than the bridge
    must be given ``CIRCUS_EVENTS_DIR``.
    """
    uid = os.geteuid()
    if uid == 0:
        return ROOT_DEFAULT_DIR
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return os.path.join(runtime, "circus-events")
    return f"/tmp/circus-events-{uid}"


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
    if longest > MAX_IPC_PATH and namespace == DEFAULT_NAMESPACE:
        raise ConfigError(
            "dir",
            f"{directory!r} is too long: socket paths would be {longest} bytes, "
            f"the system limit is {MAX_IPC_PATH}; choose a shorter directory",
        )
    if longest > MAX_IPC_PATH:  # a namespace of its own may be what is long
        raise ConfigError(
            f"dir{KEYS_JOINED}namespace",
            f"{_shown(directory)} and {_shown(namespace)} make socket paths of {longest} "
            f"bytes, the system limit is {MAX_IPC_PATH}; choose a shorter directory or namespace",
        )
    return paths


@dataclasses.dataclass(frozen=True, slots=True)
class NumberSpec:
    """A numeric option: whole (``int``) or not (``float``), within ``[minimum, maximum]``."""

    kind: type[int] | type[float]
    minimum: int | float
    maximum: int | float


#: Whole numbers as text: digits, an optional sign and ``_`` separators.
_WHOLE: Final = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*", re.ASCII)
#: Longer whole numbers are refused as too large without converting them.
_WHOLE_MAX_CHARS: Final = 40


def _shown(value: object) -> str:
    """A value for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + "..." + text[-5:]


def parse_number(key: str, value: object, spec: NumberSpec) -> Any:
    """``value`` (text or a number) as ``spec.kind``; finite and in range, or ConfigError."""
    number: int | float
    if isinstance(value, str):
        text = value.strip()
        if spec.kind is int:
            if not _WHOLE.fullmatch(text):
                raise ConfigError(key, f"{_shown(value)} is not a whole number")
            if len(text) > _WHOLE_MAX_CHARS:  # refused without converting it
                if text.startswith("-"):
                    side, bound = "below the minimum", spec.minimum
                else:
                    side, bound = "above the maximum", spec.maximum
                raise ConfigError(key, f"{_shown(value)} is far {side} of {bound}")
            number = int(text)
        else:
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(key, f"{_shown(value)} is not a number") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        raise ConfigError(key, f"{_shown(value)} is not a number (it is a {kind})")
    elif spec.kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(key, f"{_shown(value)} is not a whole number")
        number = int(value)
    else:
        number = value
    if math.isnan(number) or (math.isinf(number) and "inf" in str(value).lower()):
        raise ConfigError(key, f"{_shown(value)} is not a finite number")
    if number < spec.minimum:
        raise ConfigError(key, f"{_shown(value)} is below the minimum of {spec.minimum}")
    if number > spec.maximum:
        raise ConfigError(key, f"{_shown(value)} is above the maximum of {spec.maximum}")
    return spec.kind(number)


def _parse_list(value: object) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _check_dir(value: object) -> str:
    """The socket folder, absolute; empty would silently mean the current folder."""
    text = str(value)
    if not text.strip():
        raise ConfigError("dir", "is empty: name the socket folder (or leave it unset)")
    return os.path.abspath(os.path.expanduser(text))


def _check_namespace(value: object) -> str:
    text = str(value)
    if not text or not all(c.isalnum() or c in "-_." for c in text) or text.startswith("."):
        raise ConfigError(
            "namespace",
            f"{text!r} must be letters, digits, '-', '_' or '.' (not starting with '.')",
        )
    return text


def _check_redis_url(value: object) -> str | None:
    """The whole URL (see :mod:`._redis_url`) and its TLS files, checked now, not at connect."""
    if value is None or str(value).strip() == "":
        return None
    url = str(value).strip()
    check_tls_files(parse_redis_url(url))
    return url


@dataclasses.dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Everything a bridge needs; build with :meth:`from_options`.

    Every field is checked (and text parsed) when the config is made, however
    it is made: a bridge never binds anything with a value it would refuse
    later. ``repr`` leaves out the Redis URL and the signing key.
    """

    dir: str = dataclasses.field(default_factory=default_dir)
    namespace: str = DEFAULT_NAMESPACE
    host: str = dataclasses.field(default_factory=default_host)
    redis_url: str | None = dataclasses.field(default=None, repr=False)
    mode: Mode = "pubsub"
    buffer_max_bytes: int = DEFAULT_BUFFER_MAX_BYTES
    retention: int = DEFAULT_RETENTION
    #: Stream mode: the namespace's stream is split by channel hash into this many streams.
    stream_shards: int = 1
    signing_key: str | None = dataclasses.field(default=None, repr=False)
    ignore_hosts: tuple[str, ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    stats_interval: float = DEFAULT_STATS_INTERVAL
    group: str | None = None
    redis_prefix: str = "circus-events"
    #: Messages queued per local subscriber before it loses some (a gap).
    subscriber_hwm: int = DEFAULT_SUBSCRIBER_HWM
    #: Bytes the bridge may hold per local subscriber (see ``protocol.budget``).
    subscriber_max_bytes: int = DEFAULT_SUBSCRIBER_MAX_BYTES
    #: Bytes the bridge may hold per local publisher it has not read yet.
    publisher_max_bytes: int = DEFAULT_PUBLISHER_MAX_BYTES
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_patterns: int = DEFAULT_MAX_PATTERNS
    #: Seconds a starting bridge holds local delivery for its returning workers.
    rejoin_timeout: float = DEFAULT_REJOIN_TIMEOUT
    #: Bytes of frames it holds meanwhile at most.
    hold_max_bytes: int = DEFAULT_HOLD_MAX_BYTES
    #: Publishers wait while a live subscriber is this far behind (0: never).
    pace_bytes: int = DEFAULT_PACE_BYTES
    #: Seconds without progress after which a subscriber behind paces nobody.
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    #: Bytes all local subscribers that do not read may hold together (0: no bound).
    backlog_max_bytes: int = DEFAULT_BACKLOG_BYTES

    def __post_init__(self) -> None:
        for key, parse in _PARSERS.items():
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, parse(value))
        for key, spec in NUMERIC_OPTIONS.items():
            value = getattr(self, key)
            object.__setattr__(self, key, parse_number(key, value, spec))
        socket_paths(self.dir, self.namespace)  # refuse paths too long for AF_UNIX now
        frame = local_frame_max(self.max_message_bytes)
        least = min_budget(frame, self.subscriber_hwm)
        if self.subscriber_max_bytes < least:
            raise ConfigError(
                "subscriber_max_bytes",
                f"{self.subscriber_max_bytes} is below {least}, room for "
                f"{min(MIN_FRAMES, self.subscriber_hwm)} frames of {frame} bytes "
                "(what a subscriber is sent at most)",
            )

    @property
    def pace_threshold(self) -> int:
        """How far behind a live subscriber holds publishers (0: pacing off)."""
        return min(self.pace_bytes, self.subscriber_max_bytes // 4)

    @property
    def paths(self) -> SocketPaths:
        return socket_paths(self.dir, self.namespace)

    @property
    def redis_address(self) -> RedisAddress | None:
        """The parsed ``redis_url`` (None: single host)."""
        return parse_redis_url(self.redis_url) if self.redis_url else None

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
        return cls(**{key: raw for key, raw in options.items() if raw is not None})


def _check_mode(value: object) -> Mode:
    text = str(value).strip().lower()
    if text == "pubsub":
        return "pubsub"
    if text == "stream":
        return "stream"
    raise ConfigError("mode", f"{value!r} is not 'pubsub' or 'stream'")


def _check_host(value: object, key: str = "host") -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"{value!r} is not text")
    try:
        validate_worker_id(value)
    except ChannelError as exc:
        raise ConfigError(key, str(exc)) from None
    return value


def _check_ignore_hosts(value: object) -> tuple[str, ...]:
    return tuple(_check_host(host, "ignore_hosts") for host in _parse_list(value))


def _check_group(value: object) -> str | None:
    """A group the sockets are shared with: it must exist now, not when the bridge binds."""
    text = str(value).strip()
    if not text:
        return None
    try:
        grp.getgrnam(text)
    except KeyError:
        raise ConfigError("group", f"there is no group named {text!r} on this host") from None
    return text


def _refuse_signing_key(value: object) -> None:
    """Reserved: a key accepted and then not used would let users believe
    their messages are signed (and a plugin option shows in ``ps``)."""
    if str(value):
        raise ConfigError(
            "signing_key",
            "message signing is not implemented yet; remove the option (messages are not signed)",
        )


def _check_redis_prefix(value: object) -> str:
    text = str(value)
    if not text or len(text) > MAX_REDIS_PREFIX_CHARS or not text.isprintable() or " " in text:
        raise ConfigError(
            "redis_prefix",
            f"{text!r} must be 1 to {MAX_REDIS_PREFIX_CHARS} printable characters, no spaces",
        )
    return text


#: Text options: each parsed (and checked) by one function. Numbers are in NUMERIC_OPTIONS.
_PARSERS: Final[dict[str, Callable[[Any], Any]]] = {
    "dir": _check_dir,
    "namespace": _check_namespace,
    "host": _check_host,
    "redis_url": _check_redis_url,
    "mode": _check_mode,
    "signing_key": _refuse_signing_key,
    "ignore_hosts": _check_ignore_hosts,
    "group": _check_group,
    "redis_prefix": _check_redis_prefix,
}

#: Every numeric option of the bridge, one line each: kind, minimum, maximum.
NUMERIC_OPTIONS: Final[dict[str, NumberSpec]] = {
    "buffer_max_bytes": NumberSpec(int, 0, MAX_BUFFER_MAX_BYTES),
    "retention": NumberSpec(int, 1, MAX_RETENTION),
    "stream_shards": NumberSpec(int, 1, MAX_STREAM_SHARDS),
    "max_message_bytes": NumberSpec(int, MIN_MAX_MESSAGE_BYTES, MAX_MAX_MESSAGE_BYTES),
    "stats_interval": NumberSpec(float, MIN_STATS_INTERVAL, MAX_STATS_INTERVAL),
    "subscriber_hwm": NumberSpec(int, 1, MAX_SUBSCRIBER_HWM),
    "subscriber_max_bytes": NumberSpec(int, MIN_SUBSCRIBER_MAX_BYTES, MAX_SUBSCRIBER_MAX_BYTES),
    "publisher_max_bytes": NumberSpec(int, MIN_PUBLISHER_MAX_BYTES, MAX_SUBSCRIBER_MAX_BYTES),
    "max_subscriptions": NumberSpec(int, 1, MAX_MAX_SUBSCRIPTIONS),
    "max_patterns": NumberSpec(int, 0, MAX_MAX_PATTERNS),
    "rejoin_timeout": NumberSpec(float, 0, MAX_REJOIN_TIMEOUT),
    "hold_max_bytes": NumberSpec(int, 0, MAX_BUFFER_MAX_BYTES),
    "pace_bytes": NumberSpec(int, 0, MAX_SUBSCRIBER_MAX_BYTES),
    "stall_timeout": NumberSpec(float, MIN_STALL_TIMEOUT, MAX_STALL_TIMEOUT),
    "backlog_max_bytes": NumberSpec(int, 0, MAX_SUBSCRIBER_MAX_BYTES),
}


def relabel(error: ConfigError, labels: Mapping[str, str]) -> ConfigError:
    """``error`` naming the key as the user wrote it (``--flag``, ``CIRCUS_EVENTS_X``);
    each of two keys blamed together (``dir and namespace``)."""
    keys = error.key.split(KEYS_JOINED)
    if not any(key in labels for key in keys):
        return error
    return ConfigError(KEYS_JOINED.join(labels.get(key, key) for key in keys), error.reason)


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


def environ_labels(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """For errors: each option set by a variable, and that variable's name."""
    env = os.environ if environ is None else environ
    return {key: name for name, key in ENVIRONMENT.items() if env.get(name)}
