"""``circus-events web``: where it cannot listen it says so in one line; on
``--port 0`` it prints the port the system chose."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import BridgeProcess
from test_cli import CLI, run


def test_a_port_in_use_is_one_line_not_a_traceback(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("web", "--dir", str(short_tmp), "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"circus-events: cannot listen on 127.0.0.1:{port}: address already in use"
    )


@pytest.mark.parametrize(
    ("bind", "says"),
    [
        ("nosuchhost.invalid", "--bind: cannot resolve 'nosuchhost.invalid'"),
        ("999.1.1.1", "--bind: cannot resolve '999.1.1.1'"),
        ("", "'--bind': must not be empty"),
    ],
)
def test_a_bad_bind_address_is_named(short_tmp: Path, bind: str, says: str) -> None:
    result = run("web", "--dir", str(short_tmp), "--bind", bind)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_port_0_prints_the_port_it_listens_on(bridge: BridgeProcess) -> None:
    web = subprocess.Popen(
        [*CLI, "web", "--dir", str(bridge.directory), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert web.stdout is not None
        url = web.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/"), url
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200
    finally:
        web.terminate()
        web.communicate(timeout=15)
