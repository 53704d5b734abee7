"""A candidate worker for the leader-election tests and ``benchmarks/leader_chaos.py``.

``python -m circus_events.bench.leader_worker --dir D --worker W --roles a,b
--ttl 0.6 --fence-url redis://... --log PATH`` runs for every role and, while
it leads one, makes guarded writes (:func:`circus_events.fencing.fenced_write`,
appended to ``data:<role>``) every ``--every`` seconds. Every term change and
every write goes to ``--log`` as one JSON line (the checker reads them):

* ``{"e": "elected"|"lost", "role", "token", "since", "until", "reason", "w"}``
* ``{"e": "write", "role", "token", "t0", "t", "ok", "w"}``: ``is_leader``
  said yes at some moment between ``t0`` and ``t`` (the clock read just
  before and just after it), then the write began.

Lines on stdin steer it: ``release <role>`` (hand over, then run again),
``pause <role>`` (check ``is_leader``, then stop itself with SIGSTOP before
the write: on SIGCONT it logs ``{"e": "resumed", "leader": is_leader}`` and
makes the stale write anyway), ``exit`` (close the bus: a clean hand-over).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import redis

from circus_events import AsyncBus, Bus
from circus_events.fencing import fenced_write


class Log:
    def __init__(self, path: str, worker: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        self._lock = threading.Lock()
        self.worker = worker

    def __call__(self, **record: Any) -> None:
        record["w"] = self.worker
        with self._lock:
            self._file.write(json.dumps(record) + "\n")


def reader(commands: queue.SimpleQueue[str]) -> None:
    for line in sys.stdin:
        commands.put(line.strip())
    commands.put("exit")


def change_logger(log: Log, role: str) -> Any:
    def on_change(change: Any) -> None:
        log(
            e="elected" if change.elected else "lost",
            role=role,
            token=change.token,
            since=change.since,
            until=change.until,
            reason=change.reason,
        )

    return on_change


def checked(lead: Any) -> tuple[float, float] | None:
    """When ``lead.is_leader`` said yes, bounded by the clock read just before
    and just after it (None if it said no).

    ``is_leader`` reads the clock itself, in between: one bound alone could
    fall a microsecond outside the term (past its deadline, or before a
    term that began on another thread meanwhile).
    """
    before = time.monotonic()
    leading = lead.is_leader
    return (before, time.monotonic()) if leading else None


def write(store: Any, log: Log, role: str, token: int, checked_at: tuple[float, float]) -> bool:
    ok = fenced_write(store, f"data:{role}", f"{token} {log.worker}", token, append=True)
    log(e="write", role=role, token=token, t0=checked_at[0], t=checked_at[1], ok=ok)
    return ok


def run_sync(args: argparse.Namespace, log: Log, store: Any) -> None:
    commands: queue.SimpleQueue[str] = queue.SimpleQueue()
    threading.Thread(target=reader, args=(commands,), daemon=True).start()
    bus = Bus(dir=args.dir, worker=args.worker)
    leads = {}
    for role in args.roles:
        leads[role] = bus.leader(role, ttl=args.ttl, scope=args.scope)
        leads[role].on_change(change_logger(log, role))
    print("ready", flush=True)
    while True:
        try:
            command = commands.get(timeout=args.every)
        except queue.Empty:
            command = ""
        if command == "exit":
            bus.close()
            return
        verb, _, role = command.partition(" ")
        if verb == "release" and role in leads:
            leads[role].release()
            leads[role] = bus.leader(role, ttl=args.ttl, scope=args.scope)
            leads[role].on_change(change_logger(log, role))
        elif verb == "pause" and role in leads:
            lead = leads[role]
            if lead.wait(30) and (checked_at := checked(lead)) is not None:
                token = lead.token
                os.kill(os.getpid(), signal.SIGSTOP)
                log(e="resumed", role=role, token=token, leader=lead.is_leader)
                write(store, log, role, token, checked_at)
        for role, lead in leads.items():
            if (checked_at := checked(lead)) is not None:
                write(store, log, role, lead.token, checked_at)


async def run_async(args: argparse.Namespace, log: Log, store: Any) -> None:
    bus = AsyncBus(dir=args.dir, worker=args.worker)
    await bus.start()
    leads = {}
    for role in args.roles:
        leads[role] = bus.leader(role, ttl=args.ttl, scope=args.scope)
        leads[role].on_change(change_logger(log, role))
    print("ready", flush=True)
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def feed() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, "exit")

    threading.Thread(target=feed, daemon=True).start()
    while True:
        try:
            command = await asyncio.wait_for(lines.get(), args.every)
        except TimeoutError:
            command = ""
        if command == "exit":
            await bus.close()
            return
        verb, _, role = command.partition(" ")
        if verb == "release" and role in leads:
            await leads[role].release()
            leads[role] = bus.leader(role, ttl=args.ttl, scope=args.scope)
            leads[role].on_change(change_logger(log, role))
        for role, lead in leads.items():
            if (checked_at := checked(lead)) is not None:
                # A blocking write: the loop (and its renewals) waits meanwhile, as
                # in a careless application; the fence keeps it safe anyway.
                write(store, log, role, lead.token, checked_at)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--roles", required=True, type=lambda s: s.split(","))
    parser.add_argument("--ttl", type=float, default=0.6)
    parser.add_argument("--scope", default="cluster")
    parser.add_argument("--fence-url", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--every", type=float, default=0.03)
    parser.add_argument("--kind", choices=("sync", "async"), default="sync")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # a stack dump on demand, when a run hangs
    log = Log(args.log, args.worker)
    store = redis.Redis.from_url(args.fence_url, socket_timeout=5)
    if args.kind == "sync":
        run_sync(args, log, store)
    else:
        asyncio.run(run_async(args, log, store))


if __name__ == "__main__":
    main()
