"""A client's options, resolved once: argument, else environment, else default.

Also the argument checks every public method shares (timeouts, history,
patterns), so both clients reject bad input with the same
:class:`CircusEventsError`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from collections.abc import Mapping
from typing import Final, Literal

from .._config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_NAMESPACE,
    BridgeConfig,
    SocketPaths,
    default_dir,
    default_host,
    environ_options,
    socket_paths,
)
from .._exceptions import ArgumentError, ChannelError, ConfigError
from .._sockdir import check_client_dir
from ..protocol import Codec, Pattern, parse_codec, validate_worker_id
from .limits import (
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SEND_QUEUE,
    DEFAULT_SEND_QUEUE_BYTES,
    MAX_TIMEOUT,
)

__all__ = [
    "ClientOptions",
    "Scope",
    "check_timeout",
    "compile_pattern",
    "default_worker_id",
    "history_args",
    "or_forever",
]

Scope = Literal["process", "host", "cluster"]


def check_timeout(name: str, value: object) -> float | None:
    """A timeout argument: None (wait forever) or a finite number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentError(name, f"must be a number of seconds or None, not {value!r}")
    if not 0 <= value <= MAX_TIMEOUT:  # nan too
        raise ArgumentError(
            name, f"must be from 0 to {MAX_TIMEOUT:.0f} seconds (or None), not {value!r}"
        )
    return float(value)


def or_forever(seconds: float | None) -> float:
    """A checked timeout where None (wait forever) means MAX_TIMEOUT."""
    return MAX_TIMEOUT if seconds is None else seconds


#: The largest count a ZeroMQ option takes (a C int): send_queue is SNDHWM.
MAX_HWM: Final = 2**31 - 1


def _check_count(
    name: str,
    value: object,
    error: type[ConfigError | ArgumentError],
    maximum: int | None = None,
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(name, f"must be a whole number, not {value!r}")
    if value < 1:
        raise error(name, f"must be at least 1, not {value!r}")
    if maximum is not None and value > maximum:
        raise error(name, f"must be at most {maximum}, not {value!r}")
    return value


def _check_types(*, echo: object, **texts: object) -> None:
    """Options of the wrong type, refused by name (a bytes ``dir`` would
    otherwise become a relative path named ``b'...'``)."""
    for name, value in texts.items():
        text = os.fspath(value) if name == "dir" and isinstance(value, os.PathLike) else value
        if text is not None and (not isinstance(text, str) or not text):
            raise ConfigError(name, f"must be non-empty text, not {value!r}")
    if not isinstance(echo, bool):
        raise ConfigError("echo", f"must be True or False, not {echo!r}")


def history_args(history: object, since: object) -> tuple[int | None, int | None] | None:
    """``subscribe(history=, since=)`` checked: (limit, since in ms), or None for neither."""
    if history is None and since is None:
        return None
    if history is not None and (
        isinstance(history, bool) or not isinstance(history, int) or history < 0
    ):
        raise ArgumentError("history", f"must be a number of events, 0 or more, not {history!r}")
    since_ms = None
    if since is not None:
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise ArgumentError("since", f"must be a Unix time in seconds, not {since!r}")
        if not math.isfinite(since):
            raise ArgumentError("since", f"must be a Unix time in seconds, not {since!r}")
        since_ms = max(int(since * 1000), 0)
    return history, since_ms


@functools.lru_cache(maxsize=1024)
def _cached_pattern(text: str) -> Pattern:
    return Pattern(text)


def compile_pattern(text: object) -> Pattern:
    """A checked :class:`Pattern`; the same text compiles once (subscribe/close loops)."""
    if type(text) is str:
        return _cached_pattern(text)
    return Pattern(text)  # type: ignore[arg-type]  # raises ChannelError


def default_worker_id(host: str) -> str:
    """``<host>/<program>/<pid>``: a circus wid is a reused slot, not an identity."""
    program = os.environ.get("SUPERVISOR_PROCESS_NAME") or os.path.basename(sys.argv[0] or "")
    program = program.removesuffix(".py") or "python"
    return f"{host}/{program}/{os.getpid()}"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientOptions:
    """A client's resolved options: argument, else variable, else the shared default."""

    paths: SocketPaths
    host: str
    worker: str
    worker_is_default: bool
    codec: Codec
    echo: bool
    max_message_bytes: int
    publish_timeout: float
    send_queue: int
    queue_size: int
    queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES
    send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES
    max_delay: float | None = None

    @classmethod
    def resolve(
        cls,
        *,
        dir: str | None = None,
        namespace: str | None = None,
        host: str | None = None,
        worker: str | None = None,
        codec: str | Codec = Codec.JSON,
        echo: bool = False,
        max_message_bytes: int | None = None,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        send_queue: int = DEFAULT_SEND_QUEUE,
        send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES,
        max_delay: float | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        environ: Mapping[str, str] | None = None,
    ) -> ClientOptions:
        env = environ_options(environ)
        _check_types(dir=dir, namespace=namespace, host=host, worker=worker, echo=echo)
        if dir is not None:
            dir = os.fspath(dir)
        bridge = BridgeConfig.from_options(
            {
                "dir": dir or env.get("dir") or default_dir(environ),
                "namespace": namespace or env.get("namespace") or DEFAULT_NAMESPACE,
                "host": host or env.get("host") or default_host(),
                "max_message_bytes": max_message_bytes
                if max_message_bytes is not None
                else env.get("max_message_bytes") or DEFAULT_MAX_MESSAGE_BYTES,
            }
        )
        worker_id = worker or env.get("worker")
        try:
            validate_worker_id(worker_id or bridge.host)
        except ChannelError as exc:
            raise ConfigError("worker", str(exc)) from None
        try:
            parsed_codec = parse_codec(codec)
        except ValueError as exc:
            raise ConfigError("codec", str(exc)) from None
        if (
            isinstance(publish_timeout, bool)
            or not isinstance(publish_timeout, int | float)
            or not 0 <= publish_timeout <= MAX_TIMEOUT
        ):
            raise ConfigError(
                "publish_timeout",
                f"must be from 0 to {MAX_TIMEOUT:.0f} seconds, not {publish_timeout!r}",
            )
        if max_delay is not None and (
            isinstance(max_delay, bool)
            or not isinstance(max_delay, int | float)
            or not 0 < max_delay <= MAX_TIMEOUT
        ):
            raise ConfigError(
                "max_delay",
                f"must be None or more than 0 and at most {MAX_TIMEOUT:.0f} seconds,"
                f" not {max_delay!r}",
            )
        _check_count("send_queue", send_queue, ConfigError, MAX_HWM)
        _check_count("send_queue_bytes", send_queue_bytes, ConfigError)
        _check_count("queue_size", queue_size, ConfigError)
        _check_count("queue_max_bytes", queue_max_bytes, ConfigError)
        paths = socket_paths(bridge.dir, bridge.namespace)
        # Before any socket exists: one lstat chain per client, never per message.
        check_client_dir(paths.directory)
        return cls(
            paths=paths,
            host=bridge.host,
            worker=worker_id or default_worker_id(bridge.host),
            worker_is_default=not worker_id,
            codec=parsed_codec,
            echo=echo,
            max_message_bytes=bridge.max_message_bytes,
            publish_timeout=publish_timeout,
            send_queue=send_queue,
            send_queue_bytes=send_queue_bytes,
            max_delay=None if max_delay is None else float(max_delay),
            queue_size=queue_size,
            queue_max_bytes=queue_max_bytes,
        )

    def queue_limits(self, size: object, max_bytes: object) -> tuple[int, int]:
        """One subscription's limits: its own arguments, else the bus's."""
        return (
            self.queue_size if size is None else _check_count("queue_size", size, ArgumentError),
            self.queue_max_bytes
            if max_bytes is None
            else _check_count("queue_max_bytes", max_bytes, ArgumentError),
        )

    def after_fork(self) -> ClientOptions:
        """The options for a forked child: a default worker id names the new pid."""
        if not self.worker_is_default:
            return self
        return dataclasses.replace(self, worker=default_worker_id(self.host))
