"""The paced run's table and its chart of latency against offered load.

The chart is a PNG drawn with matplotlib when it is installed (the
``bench`` extra), else a small SVG written here: the figure should never
depend on an optional package.
"""

from __future__ import annotations

import math
import os
from typing import Any, Final

__all__ = ["print_paced", "write_paced_chart"]

_COLOURS: Final = {"ce": "#1f77b4", "ce-late": "#2ca02c", "raw": "#d62728"}
_DASHES: Final = {"p50": "", "p99": "6,3", "p999": "2,3"}


def print_paced(report: dict[str, Any], json_path: str, chart: str | None) -> None:
    summary = report["summary"]
    config = report["config"]
    env = report["environment"]
    print(
        f"paced publishers: {config['publishers']} publishers (host A), "
        f"{config['subscribers']} subscribers (host B), {config['seconds']:g} s per run, "
        f"medians of {config['repeats']}; load average {env['loadavg'][0]:.2f} "
        f"on {env['cpus']} CPUs"
    )
    head = (
        f"{'system':<6} {'offered':>8} {'achieved':>8} {'delivered':>9} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'p999 ms':>8} {'CPU s/10k':>9}  pub / bridges / redis / sub"
    )
    print(head)
    for system, entry in summary.items():
        if not isinstance(entry, dict) or "by_load" not in entry:
            continue
        for row in entry["by_load"]:
            lat = row["latency_ms"]
            roles = row["cpu_s_per_10k_by_role"]
            print(
                f"{system:<6} {row['offered_per_s']:>8,.0f} {row['achieved_per_s']:>8,.0f} "
                f"{row['delivered_fraction']:>9.2%} {lat['p50']:>7.2f} {lat['p99']:>7.2f} "
                f"{lat['p999']:>8.2f} {row['cpu_s_per_10k']:>9.2f}  "
                + " / ".join(
                    f"{roles[k]:.2f}" for k in ("publishers", "bridges", "redis", "subscribers")
                )
            )
        print(f"{system:<6} carries {entry['carried_per_s']:,.0f} msg/s "
              "(everything delivered, p99 < 10 ms)")  # fmt: skip
    for ratio in summary.get("ratios", []):
        cpu, p99 = ratio["cpu"], ratio["p99"]
        print(
            f"ce / raw at {ratio['offered_per_s']:,.0f} msg/s: CPU per delivery "
            + (f"{cpu:.2f}x" if cpu is not None else "n/a")
            + ", p99 "
            + (f"{p99:.2f}x" if p99 is not None else "n/a")
        )
    if summary.get("carried_ratio") is not None:
        print(f"ce / raw carried load: {summary['carried_ratio']:.2f}x")
    print(f"JSON: {json_path}")
    if chart:
        print(f"chart: {chart}")


def _series(report: dict[str, Any]) -> list[tuple[str, str, list[tuple[float, float]]]]:
    """(system, percentile, [(offered, latency ms)]) for every line of the chart."""
    lines = []
    for system, entry in report["summary"].items():
        if not isinstance(entry, dict) or "by_load" not in entry:
            continue
        for key in ("p50", "p99", "p999"):
            points = [
                (row["offered_per_s"], row["latency_ms"][key])
                for row in entry["by_load"]
                if not math.isnan(row["latency_ms"][key])
            ]
            if points:
                lines.append((system, key, points))
    return lines


def write_paced_chart(report: dict[str, Any], directory: str) -> str:
    """Latency (log scale) against offered load: ``paced.png``, or ``paced.svg``."""
    lines = _series(report)
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        return write_svg(lines, os.path.join(directory, "paced.svg"))
    styles = {"p50": "-", "p99": "--", "p999": ":"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for system, key, points in lines:
        ax.plot(
            [p[0] for p in points], [p[1] for p in points], styles[key], marker="o",
            color=_COLOURS.get(system), label=f"{report['summary'][system]['label']} {key}",
        )  # fmt: skip
    ax.axhline(10.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("offered load, msg/s (paced publishers)")
    ax.set_ylabel("one-way latency, ms")
    ax.set_title("latency against offered load")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    path = os.path.join(directory, "paced.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_svg(lines: list[tuple[str, str, list[tuple[float, float]]]], path: str) -> str:
    """The same chart as a dependency-free SVG (log latency axis)."""
    width, height, left, bottom, top, right = 720, 440, 70, 50, 20, 190
    xs = [x for _, _, pts in lines for x, _ in pts] or [1.0]
    ys = [max(y, 1e-3) for _, _, pts in lines for _, y in pts] or [1.0]
    x_max = max(xs) * 1.05
    lo, hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(*ys, 10.0)))
    hi = max(hi, lo + 1)

    def px(x: float) -> float:
        return left + x / x_max * (width - left - right)

    def py(y: float) -> float:
        frac = (math.log10(max(y, 1e-3)) - lo) / (hi - lo)
        return height - bottom - frac * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for exp in range(lo, hi + 1):
        y = py(10.0**exp)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')  # fmt: skip
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10.0**exp:g}</text>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{px(x):.1f}" y="{height - bottom + 16}" '
                   f'text-anchor="middle">{x:,.0f}</text>')  # fmt: skip
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">'
               "offered load, msg/s</text>")  # fmt: skip
    out.append(f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" '
               'text-anchor="middle">one-way latency, ms (log)</text>')  # fmt: skip
    for n, (system, key, points) in enumerate(lines):
        colour = _COLOURS.get(system, "black")
        dash = f' stroke-dasharray="{_DASHES[key]}"' if _DASHES[key] else ""
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.5"{dash}/>')  # fmt: skip
        ly = top + 16 * n + 10
        out.append(f'<line x1="{width - right + 10}" x2="{width - right + 40}" y1="{ly}" '
                   f'y2="{ly}" stroke="{colour}" stroke-width="1.5"{dash}/>')  # fmt: skip
        out.append(f'<text x="{width - right + 46}" y="{ly + 4}">{system} {key}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path
