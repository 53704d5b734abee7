"""``circus-events status``: this host's bridge, or every host's through Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, NoReturn

import click

from ._cli_leaders import STATUS_TIMEOUT
from ._cli_output import print_status
from ._exceptions import CircusEventsError, ConfigError, ControlError

__all__ = ["status_command"]

EXIT_USAGE: Final = 2


def status_command(
    reader_options: Callable[[Any], Any],
    reader_config: Callable[..., Any],
    fail: Callable[..., NoReturn],
) -> click.Command:
    """The ``status`` command, built with the CLI's shared options and helpers
    (handed in, as for ``leaders``: this module does not import ``cli``)."""

    @click.command()
    @reader_options
    @click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
    @click.option(
        "--all", "all_hosts", is_flag=True, help="Every host, from the presence records in Redis."
    )
    def status(
        dir_: str | None,
        namespace: str | None,
        redis_url_file: str | None,
        as_json: bool,
        all_hosts: bool,
    ) -> None:
        """Show this host's bridge: workers, counters, Redis state. Exit 1 if it is down.

        \b
        Examples:
          circus-events status
          circus-events status --json | jq .counters
          circus-events status --all          # every host, through Redis
          circus-events status --all --redis-url-file /etc/circus-events/redis-url
        """
        config = reader_config(dir_, namespace, redis_url_file)
        if all_hosts:
            _status_all(config, as_json, fail)
            return
        from .control import query  # noqa: PLC0415

        try:
            report = query(config.dir, config.namespace, "status", STATUS_TIMEOUT)
        except ConfigError as exc:  # the socket folder is not safe to trust
            fail(str(exc), EXIT_USAGE)
        except ControlError as exc:
            fail(str(exc))
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        print_status(report)

    return status


def _status_all(config: Any, as_json: bool, fail: Callable[..., NoReturn]) -> None:
    if not config.redis_url:
        fail(
            "--all needs a Redis: set CIRCUS_EVENTS_REDIS_URL or give --redis-url-file", EXIT_USAGE
        )
    from .bridge.redis_side import read_cluster_status  # noqa: PLC0415

    try:
        hosts = read_cluster_status(config)
    except CircusEventsError as exc:  # the URL in it has its password masked
        fail(f"cannot read cluster status from Redis: {exc}")
    except Exception as exc:  # an unexpected redis-py error: its text may quote the URL
        address = config.redis_address
        shown = str(address.display if address else "")
        fail(f"cannot read cluster status from Redis at {shown}: {type(exc).__name__}")
    if as_json:
        click.echo(json.dumps(hosts, indent=2))
        return
    if not hosts:
        click.echo("no bridge has reported to Redis")
    for report in hosts:
        print_status(report)
