"""The report of ``circus-events bench``: JSON-ready dict, terminal table, PNG charts."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import sys
from typing import Any

import redis
import zmq

from .cases import RATIOS, Options, RunResult
from .servers import redis_server_version

PEAK_TARGET_CONNECTIONS = 2


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def build_report(
    options: Options,
    runs: list[RunResult],
    faults: dict[str, Any],
    unavailable: dict[str, str],
    peer_versions: dict[str, str],
    wall: float,
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for system in options.selected():
        name = system.name
        entry: dict[str, Any] = {"label": system.label, "kind": system.kind}
        if name in unavailable:
            entry["unavailable"] = unavailable[name]
        per_workers: dict[str, Any] = {}
        for workers in options.workers:
            tput = [r for r in runs if r.system == name and r.workers == workers
                    and r.mode == "throughput"]  # fmt: skip
            lat = [r for r in runs if r.system == name and r.workers == workers
                   and r.mode == "latency"]  # fmt: skip
            if not tput and not lat:
                continue
            everything = tput + lat
            conns = [r.redis_connections_sub_host for r in everything]
            rss = [r.bridge_peak_rss_bytes for r in everything if r.bridge_peak_rss_bytes]
            per_workers[str(workers)] = {
                "delivered_per_s": _median([r.delivered_per_s for r in tput]),
                "delivered_per_s_runs": [r.delivered_per_s for r in tput],
                "lost_per_run": [r.lost for r in tput],
                "cpu_s_per_10k_delivered": _median([r.cpu_s_per_10k for r in tput]),
                "latency_us": lat[0].latency_us if lat else {},
                "latency_lost": lat[0].lost if lat else None,
                "redis_connections_sub_host": max(
                    (c for c in conns if c is not None), default=None
                ),
                "bridge_peak_rss_mib": max(rss) / 2**20 if rss else None,
            }
        entry["by_workers"] = per_workers
        summary[name] = entry
    ratios: list[dict[str, Any]] = []
    for mine, base, target, what in RATIOS:
        if mine not in summary or base not in summary:
            continue
        for workers in options.workers:
            a = summary[mine]["by_workers"].get(str(workers), {}).get("delivered_per_s")
            b = summary[base]["by_workers"].get(str(workers), {}).get("delivered_per_s")
            entry = {"what": what, "system": mine, "baseline": base, "workers": workers,
                     "target": target}  # fmt: skip
            if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
                reason = unavailable.get(base) or unavailable.get(mine) or "not measured"
                entry.update(ratio=None, ok=None, note=reason)
            else:
                entry.update(ratio=a / b, ok=a / b >= target)
            ratios.append(entry)
    checks = lead_checks(options, ratios) + connection_checks(options, summary)
    return {
        "config": dataclasses.asdict(options),
        "environment": {
            "python": sys.version.split()[0],
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "redis_py": redis.__version__,
            "redis_server": redis_server_version(),
            "peers": peer_versions,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg": list(os.getloadavg()),
            "wall_seconds": wall,
        },
        "summary": summary,
        "ratios": ratios,
        "checks": checks,
        "unavailable": unavailable,
        "faults": faults,
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def lead_checks(options: Options, ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Against peers: a wider lead with the most workers than with the fewest."""
    checks: list[dict[str, Any]] = []
    low, high = min(options.workers), max(options.workers)
    if low == high:
        return checks
    for peer in ("broadcaster", "channels-redis"):
        by = {r["workers"]: r["ratio"] for r in ratios if r["baseline"] == peer
              and r["system"] == "ce-pubsub"}  # fmt: skip
        if by.get(low) is None or by.get(high) is None:
            continue
        checks.append({
            "what": f"lead over {peer} wider with {high} workers than with {low}",
            "value": f"{by[low]:.1f}x -> {by[high]:.1f}x",
            "ok": by[high] > by[low],
        })  # fmt: skip
    return checks


def connection_checks(options: Options, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Redis connections of the subscribing host: constant (2) for circus-events,
    growing with the workers for the peers."""
    checks: list[dict[str, Any]] = []
    for name in ("ce-pubsub", "ce-stream", "redis-pubsub", "broadcaster", "channels-redis"):
        if name not in summary:
            continue
        by = {w: summary[name]["by_workers"].get(str(w), {}).get("redis_connections_sub_host")
              for w in options.workers}  # fmt: skip
        if any(v is None for v in by.values()):
            continue
        shown = ", ".join(f"{w} workers: {v}" for w, v in by.items())
        if name.startswith("ce-"):
            ok = all(v == PEAK_TARGET_CONNECTIONS for v in by.values())
            what = f"{name}: Redis connections per host constant ({PEAK_TARGET_CONNECTIONS})"
        else:
            ok = all(v is not None and v >= w for w, v in by.items())
            what = f"{name}: Redis connections per host grow with the workers (>= 1 per worker)"
        checks.append({"what": what, "value": shown, "ok": ok})
    return checks


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def print_report(report: dict[str, Any], json_path: str, charts: list[str], note: str) -> None:
    env, config = report["environment"], report["config"]
    out = print
    out()
    out(
        f"circus-events bench{' --quick' if config['quick'] else ''}: 1 publisher, "
        f"{'/'.join(str(w) for w in config['workers'])} subscribing workers, 100-byte payloads; "
        f"{env['cpus']} CPUs, python {env['python']}, pyzmq {env['pyzmq']} / libzmq "
        f"{env['libzmq']}, redis-py {env['redis_py']}, redis-server {env['redis_server']}"
    )
    if env["peers"]:
        out("peers (own venv): " + ", ".join(f"{k} {v}" for k, v in env["peers"].items()))
    if config["quick"]:
        repeats = config["repeats"]
        out(f"--quick: {repeats} repeat{'s' if repeats > 1 else ''}, fewer messages")
    out()
    out(
        f"  {'system':<31} {'workers':>7} {'delivered/s':>12} {'lost':>7} {'p50 us':>8} "
        f"{'p99 us':>8} {'p999 us':>8} {'CPU s/10k':>9} {'Redis conns':>11} {'bridge RSS':>10}"
    )
    for entry in report["summary"].values():
        if "unavailable" in entry and not entry["by_workers"]:
            out(f"  {entry['label']:<31} unavailable: {entry['unavailable']}")
            continue
        for workers, row in entry["by_workers"].items():
            lat = row["latency_us"]
            rss = row["bridge_peak_rss_mib"]
            out(
                f"  {entry['label']:<31} {workers:>7} {_fmt(row['delivered_per_s']):>12} "
                f"{sum(row['lost_per_run']):>7} {_fmt(lat.get('p50')):>8} "
                f"{_fmt(lat.get('p99')):>8} {_fmt(lat.get('p999')):>8} "
                f"{_fmt(row['cpu_s_per_10k_delivered'], '.2f'):>9} "
                f"{_fmt(row['redis_connections_sub_host'], 'd'):>11} "
                f"{(_fmt(rss, '.1f') + ' MiB') if rss else '-':>10}"
            )
    out(
        f"  (latency at {config['rate']:,.0f} msg/s for {config['latency_seconds']:g} s; "
        "Redis conns: of the subscribing host; lost: throughput runs)"
    )
    faults = report["faults"]
    if faults:
        out()
        out("faults (delivered msg/s per 100 ms in the JSON and the charts)")
        for key, fault in faults.items():
            for name, result in fault["systems"].items():
                if "unavailable" in result:
                    out(f"  {key:<17} {name:<13} unavailable: {result['unavailable']}")
                    continue
                out(
                    f"  {key:<17} {name:<13} delivered {result['received']:,} of "
                    f"{result['expected']:,} (lost {result['lost']:,}, "
                    f"gaps reported {result['reported_missed']:,})"
                )
    out()
    out("ratios (same run)")
    for r in report["ratios"]:
        if r["ratio"] is None:
            out(f"  {r['what']}, {r['workers']} workers: unavailable ({r['note']})")
            continue
        verdict = "ok" if r["ok"] else "MISSED"
        out(
            f"  {r['what']}, {r['workers']} workers: {r['ratio']:.2f}x {r['baseline']} "
            f"(target >= {r['target']:g}x: {verdict})"
        )
    for check in report["checks"]:
        out(f"  {check['what']}: {check['value']} ({'ok' if check['ok'] else 'MISSED'})")
    out()
    out(f"JSON: {json_path}")
    for path in charts:
        out(f"chart: {path}")
    if note:
        out(note)
    out(f"wall time: {env['wall_seconds']:.1f} s")


def write_charts(report: dict[str, Any], directory: str) -> tuple[list[str], str]:
    """PNG charts; without matplotlib, none and a one-line note."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        return (
            [],
            "charts skipped: matplotlib is not installed (pip install 'circus-events[bench]')",
        )
    paths: list[str] = []
    summary = report["summary"]
    workers = [str(w) for w in report["config"]["workers"]]

    fig, ax = plt.subplots(figsize=(8, 5))
    for entry in summary.values():
        xs = [int(w) for w in workers if w in entry["by_workers"]]
        ys = [entry["by_workers"][str(w)]["delivered_per_s"] for w in xs]
        if xs:
            ax.plot(xs, ys, marker="o", label=entry["label"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([int(w) for w in workers], workers)
    ax.set_xlabel("subscribing workers")
    ax.set_ylabel("delivered msg/s")
    ax.set_title("throughput")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    paths.append(_save(fig, plt, directory, "throughput.png"))

    fig, axes = plt.subplots(1, len(workers), figsize=(6 * len(workers), 5), squeeze=False)
    for ax, w in zip(axes[0], workers, strict=True):
        names = [
            e["label"] for e in summary.values() if e["by_workers"].get(w, {}).get("latency_us")
        ]
        rows = [e["by_workers"][w]["latency_us"] for e in summary.values()
                if e["by_workers"].get(w, {}).get("latency_us")]  # fmt: skip
        for offset, key in enumerate(("p50", "p99", "p999")):
            ax.barh([i + offset * 0.27 for i in range(len(rows))], [r[key] for r in rows],
                    height=0.27, label=key)  # fmt: skip
        ax.set_yticks([i + 0.27 for i in range(len(rows))], names, fontsize="small")
        ax.set_xscale("log")
        ax.set_xlabel("one-way latency, us")
        ax.set_title(f"latency at {report['config']['rate']:,.0f} msg/s, {w} workers")
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(_save(fig, plt, directory, "latency.png"))

    for key, fault in report["faults"].items():
        shown = {n: r for n, r in fault["systems"].items() if r.get("timeline")}
        if not shown:
            continue
        fig, axes = plt.subplots(
            len(shown), 1, figsize=(9, 3 * len(shown)), sharex=True, squeeze=False
        )
        for ax, (name, result) in zip(axes[:, 0], shown.items(), strict=True):
            lines = result["timeline"]
            stuck = key == "stuck_subscriber"
            healthy = [s for sub, s in lines.items() if not (stuck and sub == "subscriber 0")]
            length = max((len(s) for s in lines.values()), default=0)
            xs = [i * fault["bin_s"] for i in range(length)]
            total = [sum(s[i] if i < len(s) else 0.0 for s in healthy) for i in range(length)]
            label = "the other subscribers together" if stuck else "all subscribers together"
            ax.plot(xs, total, label=label, linewidth=1.5)
            if stuck and "subscriber 0" in lines:
                series = lines["subscriber 0"]
                ax.plot(xs[: len(series)], series, label="the stuck subscriber", linewidth=1)
            ax.axvspan(*fault["window_s"], color="red", alpha=0.12, label="fault")
            ax.set_ylabel("delivered msg/s")
            ax.set_title(f"{name}: lost {result['lost']:,} of {result['expected']:,}",
                         fontsize="small")  # fmt: skip
            ax.legend(fontsize="small", loc="upper left")
            ax.grid(True, alpha=0.3)
        axes[-1, 0].set_xlabel("seconds since the first publish (100 ms bins)")
        fig.suptitle(fault["description"], fontsize="small")
        fig.tight_layout()
        paths.append(_save(fig, plt, directory, f"fault-{key.replace('_', '-')}.png"))
    return paths, ""


def _save(fig: Any, plt: Any, directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
