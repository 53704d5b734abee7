"""Leader election under faults: a cluster of real processes, a fault loop, a checker.

:class:`Cluster` starts a lease Redis (unless ``redis=False``: one host,
single-host bridges), a separate "store" Redis that fenced writes go to,
one bridge per simulated host and candidate workers
(:mod:`.leader_worker`), all logging to one JSON-lines file.
:meth:`Cluster.chaos` injects random faults on the current leaders until
enough failovers happened; :func:`check` reads the log and the store and
asserts the safety properties, returning the takeover times per fault.
``tests/test_leader_chaos.py`` runs it with 200 failovers,
``benchmarks/leader_chaos.py`` with 1,000.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from typing import Any, Final

from ..protocol.lease import renew_deadline
from .infra import ask_bridge, bridge_env, start_bridge, stop_process, wait_for_bridge
from .servers import RedisServer

__all__ = ["FAULTS", "Cluster", "TermLog", "check"]

#: Fault kinds and their weights. ``cut_redis`` cuts a bridge off from Redis
#: (its connections killed, its ACL user disabled until the takeover: a
#: partition); ``blip_redis`` only kills its connections, which it opens again
#: at once: a blip between two renewals rightly keeps the term (``kept``).
FAULTS: Final = {
    "kill_worker": 3,
    "stop_worker": 2,
    "release": 3,
    "kill_bridge": 1,
    "cut_redis": 1,
    "blip_redis": 1,
    "restart_redis": 1,
}
#: Longest wait for a new term after a fault (seconds), before the fault counts as lost.
FAILOVER_WAIT: Final = 15.0


class TermLog:
    """Reads the workers' shared log as it grows; tracks who leads each role."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._offset = 0
        self.records: list[dict[str, Any]] = []
        #: Role -> (worker, token) of the newest term begun.
        self.current: dict[str, tuple[str, int]] = {}
        self.elections: list[dict[str, Any]] = []

    def poll(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self.path) as log:
            log.seek(self._offset)
            while True:
                line = log.readline()
                if not line.endswith("\n"):
                    break  # partial: read it next time
                self._offset += len(line.encode())
                record = json.loads(line)
                self.records.append(record)
                if record["e"] == "elected":
                    self.current[record["role"]] = (record["w"], record["token"])
                    self.elections.append(record)

    def wait_new_term(self, role: str, after_token: int, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            record: dict[str, Any]
            for record in reversed(self.elections):
                if record["role"] == role and record["token"] > after_token:
                    return record
            time.sleep(0.01)  # poll interval: the loop re-reads the log
        return None


class Cluster:
    """Hosts, workers and Redis servers for one run (a context manager)."""

    def __init__(
        self,
        workdir: str,
        *,
        hosts: int = 3,
        workers_per_host: int = 3,
        roles: tuple[str, ...] = ("alpha", "beta", "gamma"),
        ttl: float = 0.6,
        redis: bool = True,
        seed: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.roles = roles
        self.ttl = ttl
        self.random = random.Random(seed)
        self.hosts = [f"host-{n}" for n in range(hosts)]
        # One ACL user per host: cut_redis disables it to cut that bridge off.
        users = {host: secrets.token_hex(8) for host in self.hosts}
        lease_dir = _mkdir(workdir, "lease-redis")
        self.lease_redis = RedisServer(lease_dir, users=users) if redis else None
        self.store = RedisServer(_mkdir(workdir, "store-redis"))
        self.workers_per_host = workers_per_host
        self.bridges: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
        self.workers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        #: Worker -> monotonic time just before it was SIGKILLed.
        self.deaths: dict[str, float] = {}
        self.log_path = os.path.join(workdir, "terms.jsonl")
        self.log = TermLog(self.log_path)
        self.faults: list[dict[str, Any]] = []
        self._serial = 0

    # -- processes ---------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "w"):
            pass  # a fresh log for every run
        if self.lease_redis is not None:
            self.lease_redis.start()
        self.store.start()
        for host in self.hosts:
            self.start_bridge(host)
        for host in self.hosts:
            for n in range(self.workers_per_host):
                self.start_worker(host, "async" if n == 2 else "sync")

    def start_bridge(self, host: str, *, wait: bool = True) -> None:
        url = self.lease_redis.user_url(host) if self.lease_redis is not None else None
        process, bus_dir, log = start_bridge(self.workdir, host, host, "default", url)
        self.bridges[host] = (process, bus_dir, log)
        if wait:
            wait_for_bridge(process, bus_dir, log, "default")

    def start_worker(self, host: str, kind: str = "sync") -> str:
        self._serial += 1
        name = f"{host}/w{self._serial}"
        command = [sys.executable, "-m", "circus_events.bench.leader_worker"]
        command += ["--dir", self.bridges[host][1], "--worker", name, "--kind", kind]
        command += ["--roles", ",".join(self.roles), "--ttl", str(self.ttl)]
        command += ["--fence-url", self.store.url, "--log", self.log_path]
        env = {**bridge_env(), "CIRCUS_EVENTS_HOST": host}
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
        )
        self.workers[name] = (process, host)
        return name

    def retire(self, worker: str) -> None:
        """Forget a worker that exited (or wait for it to)."""
        process, _ = self.workers.pop(worker)
        process.wait(10)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def tell(self, worker: str, line: str) -> None:
        process = self.workers[worker][0]
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            process.stdin.write(line.encode() + b"\n")
            process.stdin.flush()

    def stop(self) -> None:
        for process, _ in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        for process, _, _ in self.bridges.values():
            stop_process(process, 10)
        for server in (self.lease_redis, self.store):
            if server is not None:
                server.stop()

    def wait_all_roles(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.poll()
            if all(role in self.log.current for role in self.roles):
                return
            time.sleep(0.02)  # poll interval: the loop re-reads the log
        exited = {w: p.poll() for w, (p, _) in self.workers.items() if p.poll() is not None}
        raise RuntimeError(
            f"not every role got a leader in {timeout}s: {self.log.current}; "
            f"bridges: {self.leader_status()}; exited workers: {exited}"
        )

    # -- faults ------------------------------------------------------------------------

    def chaos(self, failovers: int, *, faults: dict[str, int] | None = None) -> int:
        """Inject random faults on current leaders until ``failovers`` new terms began."""
        weights = faults or FAULTS
        if self.lease_redis is None:
            weights = {k: v for k, v in weights.items() if "redis" not in k}
        kinds, counts = list(weights), list(weights.values())
        self.wait_all_roles()
        first = len(self.log.elections)
        while len(self.log.elections) - first < failovers:
            self.settle()
            self.log.poll()
            role = self.random.choice(self.roles)
            worker, token = self.log.current[role]
            if worker not in self.workers or self.workers[worker][0].poll() is not None:
                self.log.wait_new_term(role, token, 2 * self.ttl)
                continue
            kind = self.random.choices(kinds, counts)[0]
            fault: dict[str, Any] = {"kind": kind, "role": role, "worker": worker}
            fault |= {"token": token, "at": time.monotonic(), "kept": False}
            self._inject(kind, role, worker)
            new = None
            if kind == "blip_redis":
                # A term still confirmed one renew deadline after the blip was
                # renewed after it (time left = last confirmed + renew deadline - now).
                new = self.log.wait_new_term(role, token, renew_deadline(self.ttl))
                fault["kept"] = new is None and self._still_leads(role, worker, token)
            if new is None and not fault["kept"]:
                new = self.log.wait_new_term(role, token, FAILOVER_WAIT)
            fault["takeover"] = None if new is None else new["since"] - fault["at"]
            late = fault["takeover"] is not None and fault["takeover"] > 2 * self.ttl + 1
            if late or (new is None and not fault["kept"]):
                fault["bridges"] = self.leader_status()
            self.faults.append(fault)
            self._recover(kind, worker)
        self.log.poll()
        return len(self.log.elections) - first

    def _inject(self, kind: str, role: str, worker: str) -> None:
        process, host = self.workers[worker]
        if kind == "kill_worker":
            self.deaths[worker] = time.monotonic()
            process.kill()
        elif kind == "stop_worker":
            process.send_signal(signal.SIGSTOP)
        elif kind == "release":
            self.tell(worker, f"release {role}")
        elif kind == "kill_bridge":
            bridge = self.bridges[host][0]
            bridge.kill()
            bridge.wait(10)
            self.start_bridge(host, wait=False)  # as circus would; its workers reconnect
        elif kind == "cut_redis":
            assert self.lease_redis is not None
            with self.lease_redis.client() as client:
                client.execute_command("ACL", "SETUSER", host, "off")
                client.execute_command("CLIENT", "KILL", "USER", host)
        elif kind == "blip_redis":
            assert self.lease_redis is not None
            with self.lease_redis.client() as client:
                client.execute_command("CLIENT", "KILL", "USER", host)
        else:  # restart_redis
            assert self.lease_redis is not None
            self.lease_redis.restart()

    def _recover(self, kind: str, worker: str) -> None:
        process, host = self.workers[worker]
        if kind == "kill_worker":
            self.retire(worker)
            self.start_worker(host)
        elif kind == "stop_worker":
            process.send_signal(signal.SIGCONT)
        elif kind == "cut_redis":
            assert self.lease_redis is not None
            with self.lease_redis.client() as client:
                client.execute_command("ACL", "SETUSER", host, "on")

    def _still_leads(self, role: str, worker: str, token: int) -> bool:
        """True if the worker's bridge still runs its term, confirmed, renewed."""
        host = self.workers[worker][1]
        for entry in self.leader_status().get(host) or []:
            if entry["role"] == role and entry["scope"] == "cluster":
                return bool(
                    entry["local"]
                    and entry["confirmed"]
                    and entry["holder"] == worker
                    and entry["token"] == token
                    and entry["time_left"]
                )
        return False

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every bridge answers and has a live candidate for every
        role (restarted processes take a while on a loaded machine): a
        takeover is then measured with candidates on every host. A bridge may
        still be reconnecting to Redis (after cut_redis or restart_redis: up
        to keeper.BACKOFF_MAX); one cut at a time leaves the other hosts."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            status = self.leader_status()
            if os.environ.get("LEADER_CHAOS_DEBUG") and time.monotonic() - started > 3:
                print("settling", status, flush=True)
            alive: dict[str, int] = {}
            for process, host in self.workers.values():
                if process.poll() is None:
                    alive[host] = alive.get(host, 0) + 1
            if all(
                roles is not None
                and len(roles) >= len(self.roles)
                and all(r["candidates"] >= min(1, alive.get(host, 0)) for r in roles)
                for host, roles in status.items()
            ):
                return
            time.sleep(0.05)  # poll interval: the loop asks the bridges again
        raise RuntimeError(f"the cluster did not settle in {timeout}s")

    def leader_status(self) -> dict[str, Any]:
        """Every bridge's ``leaders`` status (for a report on a slow takeover)."""
        found: dict[str, Any] = {}
        for host, (_, bus_dir, _) in self.bridges.items():
            status = ask_bridge(bus_dir, "default", "status", timeout=1.0)
            found[host] = None if status is None else status.get("leaders")
        return found

    def close_all(self) -> None:
        """Ask every worker to close its bus (clean hand-overs), then wait for them."""
        for worker in list(self.workers):
            self.tell(worker, "exit")
        for process, _ in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        self.log.poll()

    def stored_tokens(self, role: str) -> list[int]:
        with self.store.client() as client:
            return [int(v.split()[0]) for v in client.lrange(f"data:{role}", 0, -1)]


def _mkdir(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    os.makedirs(path, exist_ok=True)
    return path


# -- the checker -------------------------------------------------------------------------


def check(cluster: Cluster, *, end: float | None = None) -> dict[str, Any]:
    """Assert the safety properties over everything logged; the figures.

    For each role: terms (elected .. lost, or .. the SIGKILL of their
    worker) never overlap and their tokens strictly increase in time order;
    every accepted guarded write was checked (``is_leader`` said yes) inside
    its own term; the store's writes carry non-decreasing tokens (a stale
    one was never accepted).
    Raises AssertionError with the offending records.
    """
    cluster.log.poll()
    end = time.monotonic() if end is None else end
    terms: dict[tuple[str, str, int], list[float]] = {}
    writes: list[dict[str, Any]] = []
    refused = 0
    for record in cluster.log.records:
        key = (record["role"], record["w"], record.get("token", 0))
        if record["e"] == "elected":
            assert key not in terms, f"term logged twice: {record}"
            terms[key] = [record["since"], end]
        elif record["e"] == "lost":
            if key in terms:
                terms[key][1] = record["until"]
        elif record["e"] == "write":
            if record["ok"]:
                writes.append(record)
            else:
                refused += 1
    for (_, worker, _), interval in terms.items():
        if worker in cluster.deaths:
            interval[1] = min(interval[1], cluster.deaths[worker])
    by_role: dict[str, list[tuple[float, float, int, str]]] = {}
    for (role, worker, token), (since, until) in terms.items():
        by_role.setdefault(role, []).append((since, until, token, worker))
    for role, role_terms in by_role.items():
        role_terms.sort()
        for before, after in itertools.pairwise(role_terms):
            assert after[2] > before[2], f"{role}: token did not grow: {before} then {after}"
            assert after[0] >= before[1], f"{role}: terms overlap: {before} and {after}"
    for write in writes:
        found = terms.get((write["role"], write["w"], write["token"]))
        assert found is not None, f"a write outside any term: {write}"
        # is_leader said yes between t0 and t: that moment must lie in the term.
        assert write["t"] >= found[0] and write["t0"] <= found[1], (
            f"a write outside its term: {write}"
        )
    for role in cluster.roles:
        stored = cluster.stored_tokens(role)
        assert stored == sorted(stored), f"{role}: a stale write was accepted"
    takeovers: dict[str, list[float]] = {}
    kept: dict[str, int] = {}
    missing = 0
    for fault in cluster.faults:
        if fault["kept"]:
            kept[fault["kind"]] = kept.get(fault["kind"], 0) + 1
        elif fault["takeover"] is None:
            missing += 1
        else:
            takeovers.setdefault(fault["kind"], []).append(fault["takeover"])
    return {
        "terms": len(terms),
        "accepted_writes": len(writes),
        "refused_writes": refused,
        "faults": len(cluster.faults),
        "faults_without_takeover": missing,
        "kept_terms": kept,
        "takeover": {kind: _spread(times) for kind, times in sorted(takeovers.items())},
    }


def _spread(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)}
