"""The ``circus-events`` command: run a bridge, tail, publish, inspect.

Exit codes: 0 success, 1 runtime failure (bridge not running, publish timed
out, web's address in use, every tail subscription refused), 2 usage or
configuration error (bad option or variable, named as given:
``--flag`` or ``CIRCUS_EVENTS_VARIABLE``), 130 Ctrl-C. ``bridge`` checks every
value before it binds anything, so a bad one leaves nothing behind.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final, NoReturn

import click

from ._cli_bench import bench_command
from ._cli_leaders import STATUS_TIMEOUT, leaders_command
from ._cli_status import status_command
from ._client.limits import MAX_TIMEOUT
from ._config import (
    DEFAULT_MAX_PATTERNS,
    DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_SUBSCRIBER_HWM,
    NUMERIC_OPTIONS,
    BridgeConfig,
    environ_labels,
    environ_options,
    relabel,
)
from ._exceptions import CircusEventsError, ConfigError
from ._redis_url import read_redis_url_file, refuse_visible_password
from ._version import __version__

__all__ = ["main"]

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.secho(f"circus-events: {message}", fg="red", err=True)
    sys.exit(code)


def _bridge_config(labels: dict[str, str] | None = None, **flags: Any) -> BridgeConfig:
    """Flags override ``CIRCUS_EVENTS_*`` variables, which override defaults.

    A bad value exits 2 naming the key as the user gave it: ``--flag`` or
    ``CIRCUS_EVENTS_VARIABLE`` (``labels`` overrides, e.g. ``--redis-url-file``).
    """
    options: dict[str, Any] = dict(environ_options())
    options.pop("worker", None)
    options.update({key: value for key, value in flags.items() if value is not None})
    try:
        return BridgeConfig.from_options(options)
    except ConfigError as exc:
        _fail_config(exc, {**_labels(flags), **(labels or {})})


def _labels(flags: dict[str, Any]) -> dict[str, str]:
    """Each option's name as the user gave it: ``--flag``, else ``CIRCUS_EVENTS_VARIABLE``."""
    names = environ_labels()
    names.update({key: "--" + key.replace("_", "-") for key, v in flags.items() if v is not None})
    return names


def _fail_config(exc: ConfigError, labels: dict[str, str]) -> NoReturn:
    """Exit 2 naming the key the way the user gave it (``labels``: see :func:`_labels`)."""
    _fail(str(relabel(exc, labels)), EXIT_USAGE)


def _redis_url_flags(url: str | None, url_file: str | None) -> tuple[str | None, dict[str, str]]:
    """The URL of --redis-url (never with a password: `ps` shows it) or --redis-url-file."""
    try:
        if url is not None and url_file is not None:
            raise ConfigError("--redis-url-file", "give either --redis-url or --redis-url-file")
        if url_file is not None:
            return read_redis_url_file("--redis-url-file", url_file), {
                "redis_url": "--redis-url-file"
            }
        if url:
            refuse_visible_password("--redis-url", url, file_option="--redis-url-file")
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    return url, {}


def _range(option: str) -> str:
    """The accepted range of a numeric option, for --help."""
    spec = NUMERIC_OPTIONS[option]
    return (
        f"{spec.minimum:g} to {spec.maximum:g}"
        if spec.kind is float
        else (f"{spec.minimum} to {spec.maximum}")
    )


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An empty value would silently mean the default (or the current folder)."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty")
    return value


_common = [
    click.option(
        "--dir",
        "dir_",
        callback=_not_empty,
        help="Socket directory [CIRCUS_EVENTS_DIR; /run/circus-events for root, "
        "else $XDG_RUNTIME_DIR/circus-events or /tmp/circus-events-<uid>].",
    ),
    click.option(
        "--namespace",
        callback=_not_empty,
        help="Isolates applications [CIRCUS_EVENTS_NAMESPACE; default].",
    ),
    click.option(
        "--host", callback=_not_empty, help="Host name reported [CIRCUS_EVENTS_HOST; hostname]."
    ),
]


_redis_url_file = click.option(
    "--redis-url-file",
    metavar="PATH",
    help="Read the Redis URL (with its password) from this file: one line.",
)


def common_options(function: Any) -> Any:
    for option in reversed(_common):
        function = option(function)
    return function


def reader_options(function: Any) -> Any:
    """--dir, --namespace and --redis-url-file: a command that reads bridges reports no host."""
    for option in reversed([*_common[:2], _redis_url_file]):
        function = option(function)
    return function


def _reader_config(
    dir_: str | None, namespace: str | None, redis_url_file: str | None
) -> BridgeConfig:
    """The config of ``status`` or ``leaders``: --redis-url-file over CIRCUS_EVENTS_REDIS_URL."""
    url, labels = _redis_url_flags(None, redis_url_file)
    return _bridge_config(labels, dir=dir_, namespace=namespace, redis_url=url)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="circus-events")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """One event bus for every worker on every host.

    \b
    Examples:
      circus-events bridge --redis-url redis://10.0.0.5:6379/0
      circus-events tail 'orders.*'
      circus-events publish orders.paid '{"id": 42}'
      circus-events status
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


@cli.command()
@common_options
@click.option(
    "--redis-url",
    help="Relay through this Redis [CIRCUS_EVENTS_REDIS_URL]; none: single host. "
    "No password here (`ps` shows it): use the variable or --redis-url-file.",
)
@_redis_url_file
@click.option(
    "--mode",
    type=click.Choice(["pubsub", "stream"]),
    help="Cross-host mode [CIRCUS_EVENTS_MODE; pubsub].",
)
@click.option(
    "--buffer-max-bytes",
    help=f"Outbound buffer while Redis is away [64 MiB; {_range('buffer_max_bytes')}].",
)
@click.option(
    "--max-message-bytes", help=f"Largest message accepted [1 MiB; {_range('max_message_bytes')}]."
)
@click.option("--ignore-hosts", help="Comma-separated hosts whose events are dropped.")
@click.option(
    "--stats-interval",
    help=f"Seconds between presence updates in Redis [5; {_range('stats_interval')}].",
)
@click.option(
    "--group", help="Unix group whose members may use the sockets (sockets 0660, folder 0750)."
)
@click.option(
    "--subscriber-hwm",
    help="Frames (a message, or a batch of up to 16 KiB) queued per local subscriber "
    f"before it loses some [{DEFAULT_SUBSCRIBER_HWM}; {_range('subscriber_hwm')}].",
)
@click.option(
    "--retention",
    help=f"Stream mode: entries kept per stream, XADD MAXLEN ~ [100000; {_range('retention')}].",
)
@click.option(
    "--stream-shards",
    help=f"Stream mode: streams per namespace, by channel hash [1; {_range('stream_shards')}].",
)
@click.option(
    "--subscriber-max-bytes",
    help="Bytes the bridge may hold per local subscriber that does not read "
    f"[512 MiB; {_range('subscriber_max_bytes')}].",
)
@click.option(
    "--publisher-max-bytes",
    help="Bytes the bridge may hold per local publisher before it is slowed down "
    f"[256 MiB; {_range('publisher_max_bytes')}].",
)
@click.option(
    "--max-subscriptions",
    help=f"Distinct subscriptions per bridge (Redis SUBSCRIBEs) "
    f"[{DEFAULT_MAX_SUBSCRIPTIONS}; {_range('max_subscriptions')}].",
)
@click.option(
    "--max-patterns",
    help=f"Distinct pattern prefixes among them (Redis PSUBSCRIBEs) "
    f"[{DEFAULT_MAX_PATTERNS}; {_range('max_patterns')}].",
)
@click.option(
    "--rejoin-timeout",
    help="Seconds a starting bridge holds local delivery until the workers of the "
    f"previous one are back [5; {_range('rejoin_timeout')}; 0: no hold].",
)
@click.option(
    "--hold-max-bytes",
    help=f"Bytes it holds meanwhile at most [64 MiB; {_range('hold_max_bytes')}].",
)
@click.option(
    "--pace-bytes",
    help="Stop reading local publishers while a live subscriber is this many bytes "
    f"behind, at most subscriber_max_bytes/4 [32 MiB; {_range('pace_bytes')}; 0: never].",
)
@click.option(
    "--stall-timeout",
    help="Seconds without progress after which a subscriber that is behind paces "
    f"nobody and loses at its high-water mark [1; {_range('stall_timeout')}].",
)
@click.option(
    "--backlog-max-bytes",
    help="Bytes all local subscribers that do not read may leave in the bridge together; "
    f"past it the one behind longest is disconnected [1 GiB; {_range('backlog_max_bytes')}; "
    "0: no bound].",
)
def bridge(
    dir_: str | None,
    namespace: str | None,
    host: str | None,
    redis_url: str | None,
    redis_url_file: str | None,
    mode: str | None,
    buffer_max_bytes: str | None,
    max_message_bytes: str | None,
    ignore_hosts: str | None,
    stats_interval: str | None,
    group: str | None,
    subscriber_hwm: str | None,
    subscriber_max_bytes: str | None,
    publisher_max_bytes: str | None,
    max_subscriptions: str | None,
    max_patterns: str | None,
    retention: str | None,
    stream_shards: str | None,
    rejoin_timeout: str | None,
    hold_max_bytes: str | None,
    pace_bytes: str | None,
    stall_timeout: str | None,
    backlog_max_bytes: str | None,
) -> None:
    """Run this host's bridge in the foreground (for supervisor or systemd).

    \b
    Examples:
      circus-events bridge                                  # single host
      CIRCUS_EVENTS_REDIS_URL=redis://redis:6379/0 circus-events bridge
      circus-events bridge --redis-url-file /etc/circus-events/redis-url
      circus-events bridge --namespace shop --dir /run/circus-events -v

    SIGTERM, SIGINT or SIGHUP stops intake, forwards what workers already
    sent, removes the sockets and exits 0.
    """
    from .bridge.core import run_bridge  # noqa: PLC0415

    redis_url, labels = _redis_url_flags(redis_url, redis_url_file)
    config = _bridge_config(
        labels,
        dir=dir_,
        namespace=namespace,
        host=host,
        redis_url=redis_url,
        mode=mode,
        buffer_max_bytes=buffer_max_bytes,
        max_message_bytes=max_message_bytes,
        ignore_hosts=ignore_hosts,
        stats_interval=stats_interval,
        group=group,
        subscriber_hwm=subscriber_hwm,
        subscriber_max_bytes=subscriber_max_bytes,
        publisher_max_bytes=publisher_max_bytes,
        max_subscriptions=max_subscriptions,
        max_patterns=max_patterns,
        retention=retention,
        stream_shards=stream_shards,
        rejoin_timeout=rejoin_timeout,
        hold_max_bytes=hold_max_bytes,
        pace_bytes=pace_bytes,
        stall_timeout=stall_timeout,
        backlog_max_bytes=backlog_max_bytes,
    )
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("circus_events").setLevel(logging.INFO)
    try:
        run_bridge(config)
    except ConfigError as exc:  # an unsafe socket folder, an unknown group: fix and retry
        _fail(str(exc), EXIT_USAGE)
    except CircusEventsError as exc:
        _fail(str(exc))


def _bus_kwargs(dir_: str | None, namespace: str | None, host: str | None) -> dict[str, Any]:
    return {"dir": dir_, "namespace": namespace, "host": host}


@cli.command()
@common_options
@click.argument("patterns", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events.")
@click.option(
    "--history", type=click.IntRange(min=0), help="First show the last N events (stream mode)."
)
def tail(
    dir_: str | None,
    namespace: str | None,
    host: str | None,
    patterns: tuple[str, ...],
    as_json: bool,
    count: int | None,
    history: int | None,
) -> None:
    """Print events matching PATTERNS as they arrive (Ctrl-C to stop).

    \b
    Examples:
      circus-events tail '*'                      # everything
      circus-events tail 'orders.*' cache.clear   # two patterns
      circus-events tail --json 'circus.*' | jq .
      circus-events tail --history 50 'orders.*'  # the last 50 first (stream mode)

    Lines on stderr say when the bridge goes away, is back, or restarted.
    """
    from ._cli_tail import run_tail  # noqa: PLC0415

    kwargs = _bus_kwargs(dir_, namespace, host)
    run_tail(
        kwargs,
        patterns,
        as_json=as_json,
        count=count,
        history=history,
        fail=_fail,
        labels=_labels(kwargs),
    )


@cli.command()
@common_options
@click.argument("channel")
@click.argument("data")
@click.option(
    "--scope", type=click.Choice(["cluster", "host"]), default="cluster", show_default=True
)
@click.option("--raw", is_flag=True, help="Send DATA as a plain string, not JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, MAX_TIMEOUT, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the bridge (more than 0).",
)
def publish(
    dir_: str | None,
    namespace: str | None,
    host: str | None,
    channel: str,
    data: str,
    scope: str,
    raw: bool,
    timeout: float,
) -> None:
    """Publish DATA (JSON) on CHANNEL; DATA '-' publishes each line of stdin.

    \b
    Examples:
      circus-events publish cache.clear '{"key": "user:42"}'
      circus-events publish --raw greetings hello
      tail -f app.log | circus-events publish --raw logs.app -
    """
    from ._cli_publish import parse_data, publish_lines  # noqa: PLC0415
    from .client import Bus  # noqa: PLC0415
    from .protocol import validate_channel  # noqa: PLC0415

    try:  # before the bus: bad input is refused without a connection
        validate_channel(channel)
        value = None if data == "-" else parse_data(data, raw)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    if data == "-" and sys.stdin is None:
        _fail("DATA '-' reads lines from stdin, and stdin is closed", EXIT_USAGE)
    kwargs = _bus_kwargs(dir_, namespace, host)
    stop = None
    try:
        with Bus(**kwargs, publish_timeout=timeout) as bus:
            if data == "-":
                stop = publish_lines(bus, channel, sys.stdin.buffer, raw=raw, scope=scope)
            else:
                bus.publish(channel, value, scope=scope)  # type: ignore[arg-type]
            if not _wait_sent(bus, timeout):  # what was published goes, even after a bad line
                _fail(
                    "the bridge did not take the message(s); is it running? (circus-events status)"
                )
    except ConfigError as exc:
        _fail_config(exc, {**_labels(kwargs), "publish_timeout": "--timeout"})
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    except CircusEventsError as exc:
        _fail(str(exc))
    if stop is not None:
        _fail(stop.message, stop.code)


def _wait_sent(bus: Any, timeout: float) -> bool:
    """True once the PUSH queue is empty, so exiting loses nothing."""
    from .client import Bus  # noqa: PLC0415

    assert isinstance(bus, Bus)
    return bus.flush(timeout)


@cli.command()
@common_options
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    callback=_not_empty,
    help="Address to listen on (no auth!).",
)
def web(dir_: str | None, namespace: str | None, host: str | None, port: int, bind: str) -> None:
    """Serve a live page: hosts and workers, event rates, a filterable tail.

    \b
    Examples:
      circus-events web                     # http://127.0.0.1:8080/
      circus-events web --port 9000 --bind 0.0.0.0   # anyone who reaches it sees every event
    """
    import asyncio  # noqa: PLC0415

    try:
        from .web import serve  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - the [websocket] extra is missing
        _fail(f"circus-events web needs the [websocket] extra ({exc.name} is missing)", EXIT_USAGE)
    from .aio import AsyncBus  # noqa: PLC0415
    from .control import query  # noqa: PLC0415

    config = _bridge_config(dir=dir_, namespace=namespace)

    def hosts() -> list[dict[str, Any]]:
        """Every host through Redis, with this host's own (fresher) status over its record."""
        here = query(config.dir, config.namespace, "status", STATUS_TIMEOUT)
        if not config.redis_url:
            return [here]
        from .bridge.redis_side import read_cluster_status  # noqa: PLC0415

        others = [r for r in read_cluster_status(config) if r.get("host") != here.get("host")]
        return sorted([here, *others], key=lambda r: str(r.get("host")))

    kwargs = _bus_kwargs(dir_, namespace, host)
    sock = _web_socket(bind, port)
    port = sock.getsockname()[1]  # --port 0: the one the system chose

    async def run() -> None:
        async with AsyncBus(**kwargs, worker=f"web@{port}") as bus:
            await serve(bus, hosts, sock=sock, ready=lambda url: click.echo(url))

    try:
        asyncio.run(run())
    except ConfigError as exc:
        _fail_config(exc, _labels(kwargs))
    except CircusEventsError as exc:
        _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _web_socket(bind: str, port: int) -> Any:
    """The page's socket, bound now: a bad --bind exits 2, an address in use 1."""
    import socket  # noqa: PLC0415

    from .web import listen_socket  # noqa: PLC0415

    try:
        return listen_socket(bind, port)
    except socket.gaierror as exc:
        _fail(f"--bind: cannot resolve {bind!r}: {exc.strerror}", EXIT_USAGE)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        _fail(f"cannot listen on {bind}:{port}: {reason}")


@cli.command("supervisor-listener")
@common_options
def supervisor_listener(dir_: str | None, namespace: str | None, host: str | None) -> None:
    """Forward supervisord PROCESS_STATE events to the bus (an [eventlistener:]).

    \b
    Example (supervisord.conf):
      [eventlistener:circus-events]
      command = circus-events supervisor-listener
      events = PROCESS_STATE

    Events appear as supervisor.<program>.<state>, e.g. supervisor.web.exited.
    Nothing but the listener protocol is written to stdout.
    """
    import socket as socket_module  # noqa: PLC0415

    from .client import Bus  # noqa: PLC0415
    from .supervisor import run_listener  # noqa: PLC0415

    logging.getLogger().handlers[:] = [logging.StreamHandler(sys.stderr)]
    name = host or environ_options().get("host") or socket_module.gethostname()
    worker = f"supervisord@{name}"
    kwargs = _bus_kwargs(dir_, namespace, host)
    try:
        bus = Bus(**kwargs, worker=worker, publish_timeout=0.5)
    except ConfigError as exc:
        _fail_config(exc, _labels(kwargs))
    except CircusEventsError as exc:
        _fail(str(exc), EXIT_USAGE)
    with bus:
        run_listener(sys.stdin, sys.stdout, bus)


cli.add_command(bench_command)


cli.add_command(status_command(reader_options, _reader_config, _fail))
cli.add_command(leaders_command(reader_options, _reader_config, _fail))


def main() -> None:
    """Console entry point."""
    cli(prog_name="circus-events")
