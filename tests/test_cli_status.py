"""``circus-events status --all`` and ``leaders``: the Redis URL from a file, each
host's mode, and no ``--host`` (which they would take and ignore)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BridgeProcess, RedisServer, wait_until
from test_cli import run


def test_status_all_reads_a_url_file_and_shows_each_mode(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess], short_tmp: Path
) -> None:
    for host, mode in (("host-a", "stream"), ("host-b", "pubsub")):
        args = ("--stats-interval", "0.5", "--mode", mode)
        bridge_factory(host, redis_url=redis_server.url, args=args)
    url_file = short_tmp / "redis-url"
    url_file.write_text(redis_server.url + "\n")
    url_file.chmod(0o600)

    def shown() -> str:
        result = run("status", "--all", "--redis-url-file", str(url_file))
        assert result.returncode == 0, result.stderr
        return result.stdout if "host-a" in result.stdout and "host-b" in result.stdout else ""

    out = wait_until(shown, 15, "both hosts in status --all")
    assert "bridge host-a (default)" in out and "mode stream" in out, out
    assert "bridge host-b (default)" in out and "mode pubsub" in out, out
    assert "mode ?" not in out
    leaders = run("leaders", "--redis-url-file", str(url_file), "--json")
    assert leaders.returncode == 0 and leaders.stdout.strip() == "[]", leaders.stderr


def test_status_all_without_redis_names_both_ways(short_tmp: Path) -> None:
    result = run("status", "--all", "--dir", str(short_tmp))
    assert result.returncode == 2
    assert "set CIRCUS_EVENTS_REDIS_URL or give --redis-url-file" in result.stderr


@pytest.mark.parametrize("command", ["status", "leaders"])
def test_status_and_leaders_take_no_host(command: str, short_tmp: Path) -> None:
    result = run(command, "--dir", str(short_tmp), "--host", "x")
    assert result.returncode == 2
    assert "No such option '--host'" in result.stderr, result.stderr
