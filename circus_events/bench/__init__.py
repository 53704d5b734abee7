"""``circus-events bench``: circus-events against raw Redis/ZeroMQ and peer libraries.

Modules: :mod:`.harness` (what runs, in which order), :mod:`.workers` (the
circus-events worker processes and the figures), :mod:`.baselines` (raw
pyzmq and redis-py workers), :mod:`.peers` and ``peer_worker.py`` (the peer
libraries, in their own venv), :mod:`.infra` (redis-server, bridges,
sampling), :mod:`.report` (table, JSON, charts).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .harness import Options, run

__all__ = ["Options", "bench", "run"]


def bench(options: Options, out_dir: str, charts: bool = True) -> dict[str, Any]:
    """Run, then write ``bench.json`` (and the charts) to ``out_dir`` and print the table."""
    from .report import print_report, write_charts  # noqa: PLC0415

    report = run(options)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "bench.json")
    paths: list[str] = []
    note = "charts skipped (--no-charts)"
    if charts:
        paths, note = write_charts(report, out_dir)
    report["charts"] = paths
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with open(json_path, "w") as out:
        json.dump(report, out, indent=1, allow_nan=True)
        out.write("\n")
    print_report(report, json_path, paths, note)
    return report
