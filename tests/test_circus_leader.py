"""Issue 16, point 4 under a real circusd: ``circusctl stop`` of the leader's
watcher hands the role over within 1 s.

Three candidate watchers run for one role through the plugin's bridge and a
real Redis; the test stops the leader's watcher twice. Takeover times come
from the candidates' own reports (``tests/workers/candidate.py``: when the
stopped leader got SIGTERM, when its successor's term began), on the
host's monotonic clock. The ttl is 3 s, so a takeover under 1 s is a
hand-over, not a lease running out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WORKERS, CircusHost, RedisServer, wait_until

pytestmark = pytest.mark.timeout(180)

TTL = 3.0
#: Issue 16, point 4: a released or closed leadership is taken over within 1 s.
HANDOVER_LIMIT = 1.0

CANDIDATE = """
[watcher:{name}]
cmd = {python} {workers}/candidate.py {log} job {ttl} {name} {extra}
numprocesses = 1
copy_env = True
graceful_timeout = 1
autostart = {autostart}
"""


def candidates(log: Path) -> str:
    """cand-1 starts with circusd; cand-2 dies of SIGTERM, the others close their bus."""
    return "".join(
        CANDIDATE.format(
            name=name,
            python=sys.executable,
            workers=WORKERS,
            log=log,
            ttl=TTL,
            extra="--die-on-sigterm" if name == "cand-2" else "",
            autostart=name == "cand-1",
        )
        for name in ("cand-1", "cand-2", "cand-3")
    )


def records(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def newest_term(log: Path) -> dict[str, Any] | None:
    elected = [r for r in records(log) if r["e"] == "elected"]
    return max(elected, key=lambda r: r["token"]) if elected else None


def successor(log: Path, token: int) -> dict[str, Any] | None:
    """The newest term if it came after ``token``."""
    term = newest_term(log)
    return term if term is not None and term["token"] > token else None


def job_candidates(host: CircusHost) -> int:
    status = host.bridge_status()
    roles = [] if status is None else [r for r in status["leaders"] if r["role"] == "job"]
    return roles[0]["candidates"] if roles else 0


def test_circusctl_stop_of_the_leader_hands_over_within_a_second(
    short_tmp: Path, redis_server: RedisServer, circus_factory: Callable[..., CircusHost]
) -> None:
    log = short_tmp / "terms.jsonl"
    host = circus_factory("lead", redis_server.url, plugin_extra=candidates(log))
    first = wait_until(lambda: newest_term(log), 60, "cand-1 to lead")
    assert first["w"] == "cand-1"
    for count, name in enumerate(("cand-2", "cand-3"), start=2):
        assert "ok" in host.ctl("start", name)
        wait_until(lambda n=count: job_candidates(host) >= n, 30, f"{name} to be a candidate")
    takeovers = {}
    for _ in range(2):
        leader = newest_term(log)
        assert leader is not None
        assert "ok" in host.ctl("stop", leader["w"])
        token = leader["token"]
        new = wait_until(lambda t=token: successor(log, t), 10, f"a successor of {leader['w']}")
        mine = [r for r in records(log) if r["w"] == leader["w"]]
        sigterm = next(r["t"] for r in mine if r["e"] == "sigterm")
        takeovers[leader["w"]] = round(new["since"] - sigterm, 3)
        lost = [r for r in mine if r["e"] == "lost" and r["token"] == leader["token"]]
        if leader["w"] != "cand-2":  # it closed its bus: it reported the end of its term
            assert lost and lost[0]["reason"] == "released", mine
        assert all(r["until"] <= new["since"] for r in lost), "the terms overlap"
    print(f"takeover after circusctl stop (s): {takeovers}")
    assert max(takeovers.values()) < HANDOVER_LIMIT, takeovers
