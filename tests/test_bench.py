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


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("script", "args", "systems"),
    [
        (
            "local_fanout.py",
            ["--cases", "zmq-proxy,ce-raw-handler"],
            {"zmq-proxy", "ce-local-handler"},
        ),
        (
            "cross_host.py",
            ["--mode", "stream", "--cases", "redis-py,ce-raw"],
            {"redis-stream", "ce-stream"},
        ),
    ],
)
def test_benchmark_scripts_run_the_harness(
    tmp_path: str, script: str, args: list[str], systems: set[str]
) -> None:
    """The scripts in benchmarks/ are entry points into the harness: its report, its JSON."""
    out = os.path.join(str(tmp_path), "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), "--quick", "--messages", "500",
         "--latency-seconds", "0.2", "--subscribers", "2", "--no-charts", "--out", out, *args],
        capture_output=True, text=True, timeout=110, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    with open(os.path.join(out, "bench.json")) as f:
        report = json.load(f)
    assert set(report["summary"]) == systems
    for system in systems:
        row = report["summary"][system]["by_workers"]["2"]
        assert row["delivered_per_s"] > 0 and row["lost_per_run"] == [0]


def test_an_unknown_system_is_refused() -> None:
    from circus_events.bench.cases import Options  # noqa: PLC0415

    with pytest.raises(ValueError, match="unknown system 'nope'"):
        Options(systems=("ce-local", "nope"))


@pytest.mark.timeout(120)
def test_bench_websocket_smoke_measures_the_hub(tmp_path: str) -> None:
    """``bench --websocket --smoke``: 40 sockets on one uvicorn worker, circus-events
    only (the peers' venv is the full run's); every figure of the table."""
    out = os.path.join(str(tmp_path), "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    done = subprocess.run(
        [sys.executable, "-m", "circus_events", "bench", "--websocket", "--smoke", "--out", out],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    with open(os.path.join(out, "websocket.json")) as f:
        report = json.load(f)
    (row,) = report["results"]
    assert row["system"] == "ce" and row["sockets"] == 40
    assert row["received"] == row["expected"] > 0
    assert row["p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
    assert row["cpu_s_per_10k"] > 0 and row["bytes_per_idle_socket"] is not None
    assert row["redis_connections_host_b"] == 2 and row["redis_connections_host_a"] == 2
    assert "deliveries_per_s" in done.stdout
