"""How the ``circus-events`` command shows events and bridge status to a person
(coloured lines) or to a program (``--json``)."""

from __future__ import annotations

import json
import time
from typing import Any, Final

import click

from ._event import Event
from ._exceptions import CircusEventsError

__all__ = ["format_event", "print_status"]

#: One colour per host, so that lines from different hosts stand apart.
COLOURS: Final = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green")


def format_event(event: Event, as_json: bool) -> str:
    """One event as a coloured line, or as one JSON object."""
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
    colour = COLOURS[hash(event.host) % len(COLOURS)]
    body = json.dumps(data, default=repr, ensure_ascii=False) if not isinstance(data, str) else data
    return (
        f"{click.style(stamp, dim=True)} {click.style(event.host, fg=colour)} "
        f"{click.style(event.origin, dim=True)} {click.style(event.channel, bold=True)} {body}"
    )


def print_status(report: dict[str, Any]) -> None:
    """One bridge's status report, a few lines."""
    click.secho(
        f"bridge {report['host']} ({report['namespace']}) up {report['uptime']:.0f}s, "
        f"pid {report['pid']}, mode {report.get('mode', '?')}",
        bold=True,
    )
    workers = report.get("workers", [])
    click.echo(f"  workers ({len(workers)}): " + (", ".join(workers) if workers else "none"))
    counters = report.get("counters", {})
    click.echo("  counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    rejoin = report.get("rejoin")
    if rejoin and (rejoin.get("state") == "holding" or rejoin.get("held_total")):
        click.echo(  # the start's hold (bridge.rejoin): shown while on, or if it held anything
            f"  rejoin: {rejoin['state']}, held {rejoin['held_total']} frame(s), "
            f"{rejoin['missing_workers']} of {rejoin['expected_workers']} worker(s) missing"
            + (f", open after {rejoin['released_after']}s ({rejoin['reason']})"
               if rejoin.get("reason") else "")
        )  # fmt: skip
    redis = report.get("redis")
    if redis:
        click.echo("  redis: " + ", ".join(f"{k}={v}" for k, v in redis.items()))
    for lead in report.get("leaders") or []:
        left = lead.get("time_left")
        click.echo(
            f"  leader {lead['role']} ({lead['scope']}): {lead.get('holder') or '-'}"
            f" on {lead.get('host') or '-'}, token {lead.get('token') or '-'}"
            + ("" if left is None else f", {left:.1f}s left")
        )
    if report.get("last_error"):
        click.secho(f"  last error: {report['last_error']}", fg="yellow")
