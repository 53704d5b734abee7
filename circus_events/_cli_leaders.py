"""``circus-events leaders``: who leads each role, on this host and through Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, NoReturn

import click

from ._exceptions import CircusEventsError, ConfigError, ControlError

__all__ = ["STATUS_TIMEOUT", "leaders_command", "read_leases"]

#: Seconds ``circus-events status`` and ``leaders`` wait for the bridge to answer.
STATUS_TIMEOUT: Final = 2.0


def read_leases(config: Any, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every role's lease in ``config``'s namespace (empty without Redis):
    role, scope, holder, host, token and the lease's time left in seconds."""
    address = config.redis_address
    if address is None:
        return []
    import redis  # noqa: PLC0415 - only this command needs redis-py

    from .bridge.lease_script import parse_lease_value  # noqa: PLC0415
    from .bridge.presence import redis_py_client  # noqa: PLC0415
    from .bridge.redis_errors import redis_py_failure  # noqa: PLC0415
    from .bridge.subscriptions import glob_escape  # noqa: PLC0415

    prefix = f"{config.redis_prefix}:{config.namespace}:@lease:".encode()
    found = []
    try:
        with redis_py_client(address, timeout) as client:
            for key in sorted(client.scan_iter(match=glob_escape(prefix) + b"*", count=1000)):
                value, ttl_ms = client.get(key), client.pttl(key)
                if value is None:
                    continue
                _, token, host, worker = parse_lease_value(value)
                tag = key[len(prefix) :].decode("utf-8", "replace").strip("{}")
                scope, _, role = tag.partition(":")
                if scope == "host":
                    role = role.partition(":")[2]
                found.append(
                    {
                        "role": role,
                        "scope": scope,
                        "holder": worker or None,
                        "host": host or None,
                        "token": token or None,
                        "time_left": round(max(ttl_ms, 0) / 1000, 3),
                    }
                )
    except (redis.RedisError, OSError, ValueError) as exc:
        reason = redis_py_failure(address, exc, timeout)
        raise CircusEventsError(f"cannot read the leases from Redis: {reason}") from None
    return found


def leaders_command(
    reader_options: Callable[[Any], Any],
    reader_config: Callable[..., Any],
    fail: Callable[..., NoReturn],
) -> click.Command:
    """The ``leaders`` command, built with the CLI's shared options and helpers
    (handed in: this module does not import ``cli``): --dir, --namespace,
    --redis-url-file, and the config they make."""

    @click.command()
    @reader_options
    @click.option("--json", "as_json", is_flag=True, help="Print the leases as JSON.")
    def leaders(
        dir_: str | None, namespace: str | None, redis_url_file: str | None, as_json: bool
    ) -> None:
        """Show who leads each role: role, holder, host, token, time left.

        With Redis, every lease in the namespace (every host); without, the
        roles of this host's bridge.

        \b
        Examples:
          circus-events leaders
          circus-events leaders --json
        """
        config = reader_config(dir_, namespace, redis_url_file)
        try:
            if config.redis_url:
                rows = read_leases(config)
            else:
                from .control import query  # noqa: PLC0415

                rows = query(config.dir, config.namespace, "status", STATUS_TIMEOUT).get(
                    "leaders", []
                )
        except ConfigError as exc:
            fail(str(exc), 2)
        except (ControlError, CircusEventsError) as exc:
            fail(str(exc))
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            click.echo("no role has a leader")
            return
        click.secho(
            f"{'ROLE':20} {'SCOPE':8} {'HOLDER':30} {'HOST':16} {'TOKEN':>14} LEFT", bold=True
        )
        for row in rows:
            left = row.get("time_left")
            click.echo(
                f"{row['role']:20} {row['scope']:8} {row.get('holder') or '-':30} "
                f"{row.get('host') or '-':16} {row.get('token') or '-':>14} "
                f"{'-' if left is None else f'{left:.1f}s'}"
            )

    return leaders
