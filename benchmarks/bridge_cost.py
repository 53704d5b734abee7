"""What a bridge costs per lone message: instructions (callgrind) or syscalls (strace).

Starts a private redis-server and two bridges (hosts A and B, pub/sub mode
unless ``--mode stream``), one subscriber on B (pattern ``cost.*``) and one
publisher on A that sends ``--messages`` messages ``--gap`` seconds apart,
so that every message travels alone (nothing to batch). Only the interval
between the first publish and the last receipt is counted:

* ``--tool callgrind``: both bridges run under ``valgrind --tool=callgrind``;
  their counters are zeroed before the first message and dumped after the
  last; the report gives instructions per message per bridge (an idle
  interval of the same length is measured first and subtracted: the
  heartbeat and the other timers). Deterministic, so before/after
  comparisons need no repeats.
* ``--tool strace``: ``strace -c -f`` attached to each bridge for the
  interval; syscalls per message per bridge.
* ``--tool cprofile``: both bridges under cProfile; calls per message of
  each function (loop turns are ``_run_once``), startup included: use
  thousands of messages.
* ``--tool cpu``: ``/proc/<pid>/stat`` CPU time per message (noisy).

Measured on 2026-12-02 (2 shared cores, load 5-14), 300 messages 40 ms
apart, per lone message: bridge A 133k-143k instructions before the
loop-turn cuts, 108k-129k after; bridge B 134k-152k before, 67k-82k after.

Usage::

    python benchmarks/bridge_cost.py --tool callgrind --messages 300 --gap 0.02
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from circus_events import Bus
from circus_events.bench import infra
from circus_events.bench.servers import RedisServer
from circus_events.bench.workers import process_cpu_ns

NAMESPACE = "cost"


def start_bridge(
    workdir: str, name: str, url: str, mode: str, prefix: list[str]
) -> tuple[subprocess.Popen[bytes], str, str]:
    bus_dir = os.path.join(workdir, name)
    os.makedirs(bus_dir, exist_ok=True)
    log_path = os.path.join(workdir, f"{name}.log")
    profile = []
    if prefix == ["cprofile"]:
        profile, prefix = ["-m", "cProfile", "-o", f"{workdir}/profile.{name}"], []
    command = [*prefix, sys.executable, *profile, "-m", "circus_events", "bridge", "--dir", bus_dir]
    command += ["--host", f"host-{name}", "--namespace", NAMESPACE, "--redis-url", url]
    # No presence record while counting: its JSON would be counted as per-message cost.
    command += ["--mode", mode, "--stats-interval", "3600"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=infra.bridge_env()
        )
    return process, bus_dir, log_path


def callgrind_totals(workdir: str, pid: int) -> int:
    """Dump the counters of a bridge under callgrind; the dump's instruction total."""
    before = set(glob.glob(os.path.join(workdir, f"callgrind.out.{pid}*")))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(glob.glob(os.path.join(workdir, f"callgrind.out.{pid}*"))) - before
        for path in new:
            with open(path) as dump:
                for line in dump:
                    if line.startswith(("totals:", "summary:")):
                        return int(line.split()[1])
        time.sleep(0.2)  # polling for the dump file valgrind writes
    raise RuntimeError("no callgrind dump")


def show_profiles(workdir: str, messages: int) -> None:
    """The functions each bridge called most often per message, and their own time."""
    import pstats  # noqa: PLC0415

    for name in ("a", "b"):
        stats = pstats.Stats(f"{workdir}/profile.{name}")
        rows = []
        table = stats.stats  # type: ignore[attr-defined]
        for (path, line, func), (_, ncalls, tottime, _, _) in table.items():
            where = f"{os.path.basename(path)}:{line}:{func}"
            rows.append((ncalls / messages, tottime / messages * 1e6, where))
        rows.sort(reverse=True)
        print(f"--- bridge {name}: calls/msg, own us/msg, function")
        for calls, us, where in rows[:45]:
            print(f"{calls:8.2f} {us:8.2f}  {where}")
        print(f"total calls/msg {sum(r[0] for r in rows):.1f}")


def zero(pid: int) -> None:
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="cost-", dir="/tmp")
    redis = RedisServer(os.path.join(workdir, "redis"))
    os.makedirs(redis.directory, exist_ok=True)
    redis.start()
    prefix: list[str] = []
    if args.tool == "callgrind":
        prefix = [
            "valgrind", "--tool=callgrind", "--quiet",
            f"--callgrind-out-file={workdir}/callgrind.out.%p",
        ]  # fmt: skip
    if args.tool == "cprofile":
        prefix = ["cprofile"]
    bridges = {
        name: start_bridge(workdir, name, redis.url, args.mode, prefix) for name in ("a", "b")
    }
    try:
        for _name, (process, bus_dir, log_path) in bridges.items():
            infra.SETUP_TIMEOUT = 400  # type: ignore[attr-defined]
            infra.wait_for_bridge(
                process, bus_dir, log_path, NAMESPACE, ready=infra.redis_connected
            )
        pids = {name: b[0].pid for name, b in bridges.items()}
        return measure(args, bridges, pids, workdir)
    finally:
        for process, _, _ in bridges.values():
            infra.stop_process(process, timeout=60)
        redis.stop()
        if args.tool == "cprofile":
            show_profiles(workdir, args.messages)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(
    args: argparse.Namespace, bridges: dict[str, Any], pids: dict[str, int], workdir: str
) -> dict[str, Any]:
    a_dir, b_dir = bridges["a"][1], bridges["b"][1]
    pub = Bus(dir=a_dir, namespace=NAMESPACE, host="host-a", worker="pub", codec="raw")
    sub = Bus(dir=b_dir, namespace=NAMESPACE, host="host-b", worker="sub", codec="raw")
    subscription = sub.subscribe("cost.*")
    if not (sub.sync(120) and pub.sync(120)):
        raise RuntimeError("no sync")
    # Warm up: the path is taken once before counting starts.
    for i in range(args.warmup):
        pub.publish(f"cost.warm{i % 4}", b"w" * args.size)
        subscription.get(timeout=60)
        time.sleep(args.gap)
    received = threading.Event()

    def take() -> None:
        for _ in range(args.messages):
            subscription.get(timeout=120)
        received.set()

    frames0 = infra.bridge_counters(a_dir, NAMESPACE).get("accepted_frames", 0)
    idle: dict[str, int] = {}
    span = args.messages * args.gap
    if args.tool == "callgrind":
        for pid in pids.values():
            zero(pid)
        time.sleep(span)  # the idle interval: timers only
        idle = {name: callgrind_totals(workdir, pid) for name, pid in pids.items()}
        for pid in pids.values():
            zero(pid)
    tracers: dict[str, subprocess.Popen[bytes]] = {}
    if args.tool == "strace":
        for name, pid in pids.items():
            tracers[name] = subprocess.Popen(
                ["strace", "-c", "-f", "-p", str(pid), "-o", f"{workdir}/strace.{name}"],
                stderr=subprocess.DEVNULL,
            )
        time.sleep(1.0)  # strace attaches
    cpu0 = {name: process_cpu_ns(pid) for name, pid in pids.items()}
    thread = threading.Thread(target=take)
    thread.start()
    started = time.monotonic()
    payload = b"x" * args.size
    for i in range(args.messages):
        due = started + i * args.gap
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing: one lone message per gap
        pub.publish(f"cost.p{i % 8}", payload)
    if not received.wait(300):
        raise RuntimeError("not everything arrived")
    thread.join()
    elapsed = time.monotonic() - started
    busy: dict[str, int] = {}
    if args.tool == "callgrind":  # before anything else reaches the bridges
        busy = {name: callgrind_totals(workdir, pid) for name, pid in pids.items()}
    cpu1 = {name: process_cpu_ns(pid) for name, pid in pids.items()}
    frames = infra.bridge_counters(a_dir, NAMESPACE).get("accepted_frames", 0) - frames0
    # More messages than frames: the client batched some (the gap was too short).
    result: dict[str, Any] = {"messages": args.messages, "frames": frames, "seconds": elapsed}
    result["cpu_us_per_msg"] = {
        name: (cpu1[name] - cpu0[name]) / 1e3 / args.messages for name in pids
    }
    if busy:
        # The idle interval lasted span; the busy one elapsed.
        result["instructions_per_msg"] = {
            name: round((busy[name] - idle[name] * elapsed / span) / args.messages) for name in pids
        }
        result["idle_instructions_per_s"] = {name: round(idle[name] / span) for name in pids}
    if args.tool == "strace":
        for name, tracer in tracers.items():
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            with open(f"{workdir}/strace.{name}") as out:
                result[f"strace_{name}"] = out.read()
    pub.close()
    sub.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", choices=("callgrind", "strace", "cpu", "cprofile"), default="cpu")
    parser.add_argument("--mode", choices=("pubsub", "stream"), default="pubsub")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the dumps and logs")
    args = parser.parse_args()
    result = run(args)
    for key, value in result.items():
        if key.startswith("strace_"):
            print(f"--- {key}\n{value}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
