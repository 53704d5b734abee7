"""``circus-events bench`` end to end, in its tiny smoke mode (real redis-server, real bridges)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_bench_smoke_writes_every_figure_and_ratio(tmp_path: str) -> None:
    out = os.path.join(str(tmp_path), "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    done = subprocess.run(
        [sys.executable, "-m", "circus_events", "bench", "--smoke", "--out", out],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    with open(os.path.join(out, "bench.json")) as f:
        report = json.load(f)
    assert set(report) >= {"config", "environment", "summary", "ratios", "checks", "runs"}
    for system in ("zmq-proxy", "ce-local", "redis-pubsub", "ce-pubsub"):
        row = report["summary"][system]["by_workers"]["1"]
        assert row["delivered_per_s"] > 0
        assert set(row["latency_us"]) >= {"p50", "p99", "p999"}
        assert row["cpu_s_per_10k_delivered"] > 0
    assert report["summary"]["ce-pubsub"]["by_workers"]["1"]["redis_connections_sub_host"] == 2
    assert report["summary"]["ce-pubsub"]["by_workers"]["1"]["bridge_peak_rss_mib"] > 0
    ratios = {(r["system"], r["baseline"]): r for r in report["ratios"]}
    assert ratios[("ce-local", "zmq-proxy")]["ratio"] > 0
    assert ratios[("ce-pubsub", "redis-pubsub")]["ratio"] > 0
    assert ratios[("ce-pubsub", "broadcaster")]["ratio"] is None  # peers are off in smoke mode
    assert "local fan-out, 1 workers:" in done.stdout
    assert "x zmq-proxy (target >= 0.7x:" in done.stdout
