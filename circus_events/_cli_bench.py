"""``circus-events bench``: the benchmark harness, loaded only when it runs.

The harness (:mod:`circus_events.bench`) is not part of the runtime: this
command imports it inside its function, and nothing else does.
"""

from __future__ import annotations

import os
import sys
from json import dumps as json_dumps
from typing import Any

import click

__all__ = ["bench_command"]


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"circus-events: {message}", fg="red", err=True)
    sys.exit(code)


def _make_out_dir(out_dir: str) -> None:
    """The output folder, made before anything runs: a bad one must not cost a bench."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except FileExistsError:
        _fail(f"--out: {out_dir!r} is a file, not a folder", 2)
    except OSError as exc:
        _fail(f"--out: cannot create {out_dir!r}: {exc.strerror}", 2)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        _fail(f"--out: cannot write in {out_dir!r}", 2)


@click.command("bench")
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
@click.option(
    "--websocket",
    is_flag=True,
    help="Only the websocket fan-out (Hub vs python-socketio, broadcaster, channels).",
)
@click.option("--paced", is_flag=True, help="Only the many-paced-publishers run (paced.json).")
@click.option("--smoke", is_flag=True, hidden=True, help="A tiny run for the test suite.")
def bench_command(
    quick: bool,
    out_dir: str,
    no_peers: bool,
    no_faults: bool,
    no_charts: bool,
    keep: bool,
    websocket: bool,
    paced: bool,
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
      circus-events bench --websocket        # 1,000 and 5,000 sockets, 4 systems
      circus-events bench --websocket --quick --no-peers
      circus-events bench --paced --quick    # 8 paced publishers: see benchmarks/paced.py
    """
    import dataclasses  # noqa: PLC0415

    _make_out_dir(out_dir)
    if websocket:
        from .bench.ws_fanout import WsOptions, bench_websocket  # noqa: PLC0415

        ws_options = WsOptions.preset(quick=quick, smoke=smoke, peers=not no_peers)
        report = bench_websocket(ws_options, out_dir)
        if not report["results"]:
            _fail("websocket fan-out: nothing measured: " + json_dumps(report["unavailable"]))
        return

    if paced:
        from .bench.paced import PacedOptions, bench_paced  # noqa: PLC0415

        paced_options = dataclasses.replace(PacedOptions.preset(quick or smoke), keep=keep)
        try:
            bench_paced(paced_options, out_dir, charts=not no_charts)
        except RuntimeError as exc:
            _fail(str(exc))
        return

    # The harness is not part of the runtime: loaded here, and only here.
    from .bench.cases import Options  # noqa: PLC0415
    from .bench.harness import bench as run_bench  # noqa: PLC0415

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
