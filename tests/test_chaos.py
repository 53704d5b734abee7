"""The fault loop (:mod:`circus_events.bench.chaos`) in both modes, against real processes.

2 hosts (bridge processes), 3 publishers, 4 subscribers, one redis-server
with AOF; faults one after another: bridge SIGKILL and SIGSTOP, Redis
SIGKILL and restart, subscriber SIGSTOP. ``benchmarks/chaos.py`` runs the
same loop for minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from circus_events.bench.chaos import FAULTS, Chaos, check

#: Seconds of traffic between two faults (the loop's pace, not a wait for anything).
PAUSE = 0.3


def run_loop(workdir: Path, mode: str, faults: int, seed: int) -> dict[str, object]:
    with Chaos(str(workdir), mode=mode, rate=200, seed=seed, hold=(0.2, 0.6)) as chaos:
        for n in range(faults):
            chaos.fault(list(FAULTS)[n] if n < len(FAULTS) else None)  # each kind once first
            time.sleep(PAUSE)  # traffic between faults
        result = chaos.finish()
    assert sum(result["faults"].values()) == faults
    return result


@pytest.mark.timeout(180)
def test_stream_mode_fault_loop_loses_nothing_for_live_subscribers(short_tmp: Path) -> None:
    result = run_loop(short_tmp, "stream", 20, seed=12)
    problems = check(result)
    assert problems == [], (problems, result)


@pytest.mark.timeout(120)
def test_pubsub_mode_fault_loop_reports_what_it_loses(short_tmp: Path) -> None:
    result = run_loop(short_tmp, "pubsub", 8, seed=13)
    problems = check(result)
    assert problems == [], (problems, result)
