"""The lease script against a real redis-server: terms, renewals, and a Redis
that comes back from an older snapshot (tokens must never be handed out twice)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from circus_events.bench.servers import RedisServer
from circus_events.bridge.lease_script import LEASE_SCRIPT, lease_keys, parse_lease_value

TTL_MS = 300
KEYS = lease_keys(b"test:ns:", "cluster", "host-a", "billing")


def lease(client: Any, op: str, owner: str, token: int = 0) -> Any:
    return client.eval(LEASE_SCRIPT, 3, *KEYS, op, owner, TTL_MS, token, f"host-{owner}\tw")


def first_term(client: Any, owner: str, timeout: float = 5.0) -> int:
    """Acquire until the role is ours (a Redis it has not seen blocks it one ttl)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = lease(client, "acquire", owner)
        if reply[0]:
            return int(reply[0])
        time.sleep(0.02)  # the bridges' retry period, scaled down: a poll, not a wait
    raise AssertionError(f"{owner} never got the role: {reply!r}")


@pytest.mark.timeout(30)
def test_terms_renewals_and_releases(redis_server: RedisServer) -> None:
    client = redis_server.client()
    blocked = lease(client, "acquire", "a")
    assert blocked[0] == 0 and parse_lease_value(blocked[1])[0] == ""  # one ttl, nobody's
    token = first_term(client, "a")
    assert token >= int(time.time() * 1000) - 60_000  # Redis's clock: above any old token
    assert lease(client, "renew", "a", token) == 1
    assert lease(client, "renew", "a", token - 1) == 0  # a stale term is not renewed
    assert lease(client, "renew", "b", token) == 0
    held = lease(client, "acquire", "b")
    assert held[0] == 0 and parse_lease_value(held[1])[:2] == ("a", token)
    assert lease(client, "release", "b") == 0 and lease(client, "release", "a") == 1
    assert lease(client, "acquire", "b")[0] == token + 1  # released: taken at once


@pytest.mark.timeout(60)
def test_a_redis_restored_from_an_older_snapshot_never_reissues_a_token(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """The marker saying "this Redis knows the role" is in the snapshot too, so
    it cannot be trusted alone: a restart blocks the role one ttl and moves
    the counter past every token handed out, snapshot or not."""
    server = redis_factory()
    client = server.client()
    issued = [first_term(client, "a")]
    assert lease(client, "release", "a") == 1
    client.save()  # a counter and a marker, no lease
    snapshot = Path(str(server.directory)) / "dump.rdb"
    kept = snapshot.with_suffix(".old")
    shutil.copy(snapshot, kept)
    for owner in ["b", "c", "a"]:  # later terms, lost with the process
        issued.append(first_term(client, owner))
        assert lease(client, "release", owner) == 1
    assert issued == sorted(issued) and len(set(issued)) == len(issued)
    server.kill()
    shutil.copy(kept, snapshot)
    server.start()  # loads the older snapshot: its counter is below issued[-1]
    client = server.client()
    assert int(client.get(KEYS[1])) == issued[0], "the snapshot's counter came back"
    blocked = lease(client, "acquire", "c")
    assert blocked[0] == 0 and parse_lease_value(blocked[1])[0] == ""
    assert first_term(client, "c") > max(issued)
