"""The ``circus-events`` command: run a bridge, tail, publish, inspect.

Exit codes: 0 success, 1 runtime failure (bridge not running, publish timed
out), 2 usage or configuration error (bad option or variable), 130 Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from typing import Any, Final, NoReturn

import click
import zmq

from ._config import (
    DEFAULT_MAX_PATTERNS,
    DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_SUBSCRIBER_HWM,
    BridgeConfig,
    environ_options,
)
from ._event import Event
from ._exceptions import CircusEventsError, ConfigError
from ._version import __version__

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
STATUS_TIMEOUT_MS: Final = 2000


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.secho(f"circus-events: {message}", fg="red", err=True)
    sys.exit(code)


def _bridge_config(**flags: Any) -> BridgeConfig:
    """Flags override ``CIRCUS_EVENTS_*`` variables, which override defaults."""
    options: dict[str, Any] = dict(environ_options())
    options.pop("worker", None)
    options.update({key: value for key, value in flags.items() if value is not None})
    try:
        return BridgeConfig.from_options(options)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


_common = [
    click.option(
        "--dir", "dir_", help="Socket directory [CIRCUS_EVENTS_DIR; /tmp/circus-events-<uid>]."
    ),
    click.option("--namespace", help="Isolates applications [CIRCUS_EVENTS_NAMESPACE; default]."),
    click.option("--host", help="Host name reported [CIRCUS_EVENTS_HOST; hostname]."),
]


def common_options(function: Any) -> Any:
    for option in reversed(_common):
        function = option(function)
    return function


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
    "--redis-url", help="Relay through this Redis [CIRCUS_EVENTS_REDIS_URL]; none: single host."
)
@click.option(
    "--mode",
    type=click.Choice(["pubsub", "stream"]),
    help="Cross-host mode [CIRCUS_EVENTS_MODE; pubsub].",
)
@click.option("--buffer-max-bytes", help="Outbound buffer while Redis is away [64 MiB].")
@click.option("--max-message-bytes", help="Largest message accepted [1 MiB].")
@click.option("--ignore-hosts", help="Comma-separated hosts whose events are dropped.")
@click.option("--stats-interval", help="Seconds between presence updates in Redis [5].")
@click.option("--group", help="Unix group allowed to use the sockets (directory 0770).")
@click.option(
    "--subscriber-hwm",
    help="Frames (a message, or a batch of up to 16 KiB) queued per local subscriber "
    f"before it loses some [{DEFAULT_SUBSCRIBER_HWM}].",
)
@click.option(
    "--subscriber-max-bytes",
    help="Bytes the bridge may hold per local subscriber that does not read "
    "[subscriber-hwm frames of max-message-bytes].",
)
@click.option(
    "--max-subscriptions",
    help=f"Distinct subscriptions per bridge (Redis SUBSCRIBEs) [{DEFAULT_MAX_SUBSCRIPTIONS}].",
)
@click.option(
    "--max-patterns",
    help=f"Distinct pattern prefixes among them (Redis PSUBSCRIBEs) [{DEFAULT_MAX_PATTERNS}].",
)
@click.option("--retention", help="Stream mode: entries kept per stream, XADD MAXLEN ~ [100000].")
@click.option("--stream-shards", help="Stream mode: streams per namespace, by channel hash [1].")
def bridge(
    dir_: str | None,
    namespace: str | None,
    host: str | None,
    redis_url: str | None,
    mode: str | None,
    buffer_max_bytes: str | None,
    max_message_bytes: str | None,
    ignore_hosts: str | None,
    stats_interval: str | None,
    group: str | None,
    subscriber_hwm: str | None,
    subscriber_max_bytes: str | None,
    max_subscriptions: str | None,
    max_patterns: str | None,
    retention: str | None,
    stream_shards: str | None,
) -> None:
    """Run this host's bridge in the foreground (for supervisor or systemd).

    \b
    Examples:
      circus-events bridge                                  # single host
      CIRCUS_EVENTS_REDIS_URL=redis://redis:6379/0 circus-events bridge
      circus-events bridge --namespace shop --dir /run/circus-events -v

    SIGTERM or SIGINT stops intake, forwards what workers already sent,
    removes the sockets and exits 0.
    """
    from .bridge.core import run_bridge  # noqa: PLC0415

    config = _bridge_config(
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
        max_subscriptions=max_subscriptions,
        max_patterns=max_patterns,
        retention=retention,
        stream_shards=stream_shards,
    )
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("circus_events").setLevel(logging.INFO)
    try:
        run_bridge(config)
    except CircusEventsError as exc:
        _fail(str(exc))


def _bus_kwargs(dir_: str | None, namespace: str | None, host: str | None) -> dict[str, Any]:
    return {"dir": dir_, "namespace": namespace, "host": host}


_COLOURS: Final = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green")


def _format_event(event: Event, as_json: bool) -> str:
    try:
        data: Any = event.data
    except CircusEventsError:
        data = event.payload.decode("utf-8", "replace")
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    if as_json:
        return json.dumps(
            {
                "time": event.time,
                "host": event.host,
                "origin": event.origin,
                "channel": event.channel,
                "id": str(event.id),
                "data": data,
            },
            default=repr,
        )
    stamp = (
        time.strftime("%H:%M:%S", time.localtime(event.time)) + f".{int(event.time % 1 * 1000):03d}"
    )
    colour = _COLOURS[hash(event.host) % len(_COLOURS)]
    body = json.dumps(data, default=repr, ensure_ascii=False) if not isinstance(data, str) else data
    return (
        f"{click.style(stamp, dim=True)} {click.style(event.host, fg=colour)} "
        f"{click.style(event.origin, dim=True)} {click.style(event.channel, bold=True)} {body}"
    )


@cli.command()
@common_options
@click.argument("patterns", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=int, help="Exit after this many events.")
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
    """
    from .client import Bus  # noqa: PLC0415

    seen = threading.Event()
    printed = 0
    lock = threading.Lock()

    def show(event: Event) -> None:
        nonlocal printed
        with lock:
            if count is not None and printed >= count:
                return
            click.echo(_format_event(event, as_json), color=None if not as_json else False)
            printed += 1
            if count is not None and printed >= count:
                seen.set()

    def gap(report: Any) -> None:
        click.secho(
            f"!! missed {report.missed} event(s) from {report.origin} on {report.channel}",
            fg="red",
            err=True,
        )

    try:
        bus = Bus(**_bus_kwargs(dir_, namespace, host), on_gap=gap)
    except CircusEventsError as exc:
        _fail(str(exc), EXIT_USAGE)
    try:
        for pattern in patterns:
            bus.on(pattern, history=history)(show)
    except CircusEventsError as exc:
        bus.close()
        _fail(str(exc), EXIT_USAGE)
    signal.signal(signal.SIGTERM, lambda *_: seen.set())
    try:
        if not bus.sync(2):
            click.secho(
                "waiting for the bridge (is it running? circus-events status)",
                fg="yellow",
                err=True,
            )
        while not seen.wait(0.2):
            pass
    except KeyboardInterrupt:
        bus.close()
        sys.exit(EXIT_INTERRUPTED)
    bus.close()


@cli.command()
@common_options
@click.argument("channel")
@click.argument("data")
@click.option(
    "--scope", type=click.Choice(["cluster", "host"]), default="cluster", show_default=True
)
@click.option("--raw", is_flag=True, help="Send DATA as a plain string, not JSON.")
@click.option(
    "--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for the bridge."
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
    from .client import Bus  # noqa: PLC0415

    def parse(text: str) -> Any:
        if raw:
            return text
        try:
            return json.loads(text)
        except ValueError:
            _fail(f"DATA is not valid JSON: {text[:80]!r} (use --raw for plain text)", EXIT_USAGE)

    lines = (line.rstrip("\n") for line in sys.stdin) if data == "-" else iter([data])
    try:
        with Bus(**_bus_kwargs(dir_, namespace, host), publish_timeout=timeout) as bus:
            sent = 0
            for line in lines:
                if data == "-" and not line:
                    continue
                bus.publish(channel, parse(line), scope=scope)  # type: ignore[arg-type]
                sent += 1
            if not _wait_sent(bus, timeout):
                _fail(
                    "the bridge did not take the message(s); is it running? (circus-events status)"
                )
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    except CircusEventsError as exc:
        _fail(str(exc))


def _wait_sent(bus: Any, timeout: float) -> bool:
    """True once the PUSH queue is empty, so exiting loses nothing."""
    from .client import Bus  # noqa: PLC0415

    assert isinstance(bus, Bus)
    return bus.flush(timeout)


def _query_bridge(dir_: str | None, namespace: str | None) -> dict[str, Any] | None:
    config = _bridge_config(dir=dir_, namespace=namespace)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect("ipc://" + config.paths.control)
        sock.send(b'{"cmd": "status"}')
        if not sock.poll(STATUS_TIMEOUT_MS):
            return None
        reply: dict[str, Any] = json.loads(sock.recv())
        return reply
    finally:
        sock.close()
        context.term()


@cli.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option(
    "--all", "all_hosts", is_flag=True, help="Every host, from the presence records in Redis."
)
def status(
    dir_: str | None, namespace: str | None, host: str | None, as_json: bool, all_hosts: bool
) -> None:
    """Show this host's bridge: workers, counters, Redis state. Exit 1 if it is down.

    \b
    Examples:
      circus-events status
      circus-events status --json | jq .counters
      circus-events status --all          # every host, through Redis
    """
    if all_hosts:
        _status_all(dir_, namespace, as_json)
        return
    report = _query_bridge(dir_, namespace)
    if report is None:
        config = _bridge_config(dir=dir_, namespace=namespace)
        _fail(f"no bridge answers at {config.paths.control} (is it running?)")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_status(report)


def _print_status(report: dict[str, Any]) -> None:
    click.secho(
        f"bridge {report['host']} ({report['namespace']}) up {report['uptime']:.0f}s, "
        f"pid {report['pid']}, mode {report.get('mode', '?')}",
        bold=True,
    )
    workers = report.get("workers", [])
    click.echo(f"  workers ({len(workers)}): " + (", ".join(workers) if workers else "none"))
    counters = report.get("counters", {})
    click.echo("  counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    redis = report.get("redis")
    if redis:
        click.echo("  redis: " + ", ".join(f"{k}={v}" for k, v in redis.items()))
    if report.get("last_error"):
        click.secho(f"  last error: {report['last_error']}", fg="yellow")


def _status_all(dir_: str | None, namespace: str | None, as_json: bool) -> None:
    config = _bridge_config(dir=dir_, namespace=namespace)
    if not config.redis_url:
        _fail("--all needs a Redis: set CIRCUS_EVENTS_REDIS_URL", EXIT_USAGE)
    try:
        from .bridge.redis_side import read_cluster_status  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        _fail("this build has no Redis support")
    try:
        hosts = read_cluster_status(config)
    except Exception as exc:
        _fail(f"cannot read cluster status from Redis: {exc}")
    if as_json:
        click.echo(json.dumps(hosts, indent=2))
        return
    if not hosts:
        click.echo("no bridge has reported to Redis")
    for report in hosts:
        _print_status(report)


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
    try:
        bus = Bus(**_bus_kwargs(dir_, namespace, host), worker=worker, publish_timeout=0.5)
    except CircusEventsError as exc:
        _fail(str(exc), EXIT_USAGE)
    with bus:
        run_listener(sys.stdin, sys.stdout, bus)


@cli.command("bench")
@click.option("--quick", is_flag=True, help="1 and 8 workers, 1 repeat (under two minutes).")
@click.option(
    "--out",
    "out_dir",
    default="bench-results",
    show_default=True,
    help="Directory for bench.json and the PNG charts.",
)
@click.option("--no-peers", is_flag=True, help="Skip broadcaster and channels_redis.")
@click.option("--no-faults", is_flag=True, help="Skip the stuck-subscriber and outage runs.")
@click.option("--no-charts", is_flag=True, help="Write no PNG charts.")
@click.option("--keep", is_flag=True, help="Keep the temp dir (bridge and Redis logs).")
@click.option("--smoke", is_flag=True, hidden=True, help="A tiny run for the test suite.")
def bench(
    quick: bool,
    out_dir: str,
    no_peers: bool,
    no_faults: bool,
    no_charts: bool,
    keep: bool,
    smoke: bool,
) -> None:
    """Compare circus-events with raw Redis/ZeroMQ and with peer libraries.

    \b
    Starts its own redis-server (a free port) and bridges; the peers
    (broadcaster, channels_redis) run in their own venv, created on first use
    in ./.venv-bench-peers (or $CIRCUS_EVENTS_BENCH_PEERS).

    \b
    Examples:
      circus-events bench --quick            # under two minutes
      circus-events bench --out /tmp/bench   # the full run, several minutes
    """
    import dataclasses  # noqa: PLC0415

    from .bench import Options  # noqa: PLC0415
    from .bench import bench as run_bench  # noqa: PLC0415

    options = Options.preset(quick=quick, smoke=smoke)
    changes: dict[str, Any] = {"keep": keep}
    if no_peers:
        changes["peers"] = False
    if no_faults:
        changes["faults"] = False
    options = dataclasses.replace(options, **changes)
    try:
        run_bench(options, out_dir, charts=not (no_charts or smoke))
    except RuntimeError as exc:
        _fail(str(exc))


def main() -> None:
    """Console entry point."""
    cli(prog_name="circus-events")
