"""``circus-events bench`` end to end, in its tiny smoke mode (real redis-server, real bridges)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from circus_events.bench.ws_fanout import ratios


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
    assert report["send_floor_us"] > 0  # one send() per socket per event, same run


def test_websocket_ratios_say_what_a_bare_send_per_delivery_would_reach() -> None:
    """The floor row: a server doing nothing but one 10 us send() per delivery
    makes 100k deliveries per CPU second, 2x a peer that makes 50k."""
    results = [
        {"system": "ce", "sockets": 1000, "deliveries_per_cpu_s": 70_000.0, "p99_ms": 5.0,
         "bytes_per_idle_socket": 27_000},
        {"system": "broadcaster", "sockets": 1000, "deliveries_per_cpu_s": 50_000.0,
         "p99_ms": 9.0, "bytes_per_idle_socket": 30_000},
        {"system": "socketio", "sockets": 1000, "deliveries_per_cpu_s": 10_000.0,
         "p99_ms": 30.0, "bytes_per_idle_socket": 44_000},
    ]  # fmt: skip
    (row,) = ratios(results, floor_us=10.0)
    assert row["best_peer"] == "broadcaster"
    assert row["cpu_ratio"] == 1.4 and row["floor_cpu_ratio"] == 2.0
    (without,) = ratios(results)
    assert "floor_cpu_ratio" not in without


@pytest.mark.timeout(120)
def test_paced_bench_quick_measures_both_systems(tmp_path: str) -> None:
    """``circus-events bench --paced --quick``: every figure, both systems, the chart."""
    out = os.path.join(str(tmp_path), "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    done = subprocess.run(
        [sys.executable, "-m", "circus_events", "bench", "--paced", "--quick", "--out", out],
        capture_output=True, text=True, timeout=110, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    with open(os.path.join(out, "paced.json")) as f:
        report = json.load(f)
    summary = report["summary"]
    for system in ("ce", "raw"):
        rows = summary[system]["by_load"]
        assert [r["offered_per_s"] for r in rows] == report["config"]["loads"]
        for row in rows:
            assert row["delivered_fraction"] > 0.9
            assert set(row["latency_ms"]) >= {"p50", "p99", "p999"}
            assert set(row["cpu_s_per_10k_by_role"]) == {
                "publishers", "bridges", "redis", "subscribers"
            }  # fmt: skip
    assert summary["raw"]["by_load"][0]["cpu_s_per_10k_by_role"]["bridges"] == 0
    assert summary["ce"]["by_load"][0]["cpu_s_per_10k_by_role"]["bridges"] > 0
    assert len(summary["ratios"]) == len(report["config"]["loads"])
    assert os.path.exists(report["chart"])
    assert "paced ce" in done.stderr  # progress while it runs
    assert "carries" in done.stdout


@pytest.mark.timeout(120)
def test_paced_bench_runs_subscribers_with_max_delay_and_refuses_unknown_systems(
    tmp_path: str,
) -> None:
    """``benchmarks/paced.py --systems ce-late``: subscribers with ``max_delay``."""
    out = os.path.join(str(tmp_path), "out")
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "paced.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    args = [sys.executable, script, "--quick", "--loads", "500", "--no-charts", "--out", out]
    done = subprocess.run(
        [*args, "--systems", "ce-late"], capture_output=True, text=True, timeout=110, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    with open(os.path.join(out, "paced.json")) as f:
        (row,) = json.load(f)["summary"]["ce-late"]["by_load"]
    assert row["delivered_fraction"] > 0.9
    bad = subprocess.run(
        [*args, "--systems", "ce,nope"], capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown systems ['nope']" in bad.stderr


def test_paced_chart_without_matplotlib_is_an_svg(tmp_path: str) -> None:
    from circus_events.bench.paced_report import write_svg  # noqa: PLC0415

    lines = [("ce", "p50", [(1000.0, 0.5), (2000.0, 0.7)]), ("raw", "p99", [(1000.0, 12.0)])]
    path = write_svg(lines, os.path.join(str(tmp_path), "paced.svg"))
    with open(path) as f:
        text = f.read()
    assert text.startswith("<svg") and text.count("<polyline") == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("subscriber_wakeups.py", ["--messages", "300", "--rate", "1000"], "waking up: about"),
        ("ws_deliver_loop.py", ["--sockets", "50", "--rounds", "5"], "us per socket per event"),
    ],
)
def test_cost_breakdown_scripts_run(script: str, args: list[str], says: str) -> None:
    """The scripts behind the README's where-the-CPU-goes figures still run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *args],
        capture_output=True, text=True, timeout=110, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert says in done.stdout
