"""``circus-events publish``: DATA no reader could take is refused before it is
sent, and a bad line of stdin stops the command saying where (the lines
before it are delivered, none after it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BridgeProcess
from test_cli import CLI, run

from circus_events import Bus


def publish_stdin(
    bridge: BridgeProcess, *args: str, stdin: bytes
) -> subprocess.CompletedProcess[str]:
    """``publish --dir <bridge> ARGS -`` with ``stdin`` as bytes (not always UTF-8)."""
    result = subprocess.run(
        [*CLI, "publish", "--dir", str(bridge.directory), *args, "-"],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (b"{bad", "DATA is not valid JSON: '{bad'"),
        (b"\xff\xfe", "DATA is not valid UTF-8"),
        # (its size with the header depends on the worker id: the pid's digits)
        (b'"' + b"x" * 2_000_000 + b'"', "message on 'lines' is 20000"),
        (b"NaN", "DATA is not valid JSON: NaN"),
    ],
    ids=["json", "utf-8", "oversized", "nan"],
)
def test_a_bad_stdin_line_stops_publish_and_says_which(
    bridge: BridgeProcess, bad: bytes, says: str
) -> None:
    with Bus(dir=str(bridge.directory)) as bus:
        events = bus.subscribe("lines")
        assert bus.sync()
        result = publish_stdin(bridge, "lines", stdin=b"1\n\n2\n" + bad + b"\n3\n")
        assert result.returncode == 2, result.stderr
        assert f"line 4: {says}" in result.stderr, result.stderr
        assert "(2 lines published; line 4 onward not sent)" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert [events.get(timeout=5).data for _ in range(2)] == [1, 2]
        assert run("publish", "--dir", str(bridge.directory), "lines", '"end"').returncode == 0
        assert events.get(timeout=5).data == "end", "line 3 after the bad one was not sent"


def test_stdin_lines_may_end_in_crlf(bridge: BridgeProcess) -> None:
    with Bus(dir=str(bridge.directory)) as bus:
        events = bus.subscribe("lines")
        assert bus.sync()
        result = publish_stdin(bridge, "--raw", "lines", stdin=b"one\r\ntwo\r\n")
        assert result.returncode == 0, result.stderr
        assert [events.get(timeout=5).data for _ in range(2)] == ["one", "two"]


def test_publish_from_a_closed_stdin_says_so(short_tmp: Path) -> None:
    result = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *CLI, "publish", "--dir", str(short_tmp), "ok", "-"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "stdin is closed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (["NaN"], "DATA is not valid JSON: NaN is not a JSON number"),
        (["Infinity"], "DATA is not valid JSON: Infinity is not a JSON number"),
        (["--", "-Infinity"], "DATA is not valid JSON: -Infinity is not a JSON number"),
        (["1e999"], "DATA is not valid JSON: the number 1e999 is out of range"),
        (["[1.5, 1e400]"], "DATA is not valid JSON: the number 1e400 is out of range"),
        (["[" * 100_000], "DATA is not valid JSON: nested too deeply"),
        ([b"\xff\xfe"], "DATA is not valid UTF-8"),
        (["--raw", b"\xff\xfe"], "DATA is not valid UTF-8"),
    ],
    ids=["nan", "inf", "-inf", "1e999", "nested-1e400", "deep", "utf-8", "raw-utf-8"],
)
def test_data_no_reader_could_take_is_refused(
    short_tmp: Path, data: list[str | bytes], says: str
) -> None:
    args = [os.fsencode(a) for a in (*CLI, "publish", "--dir", str(short_tmp), "ok", *data)]
    result = subprocess.run(args, capture_output=True, timeout=30, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert says in stderr and "Traceback" not in stderr, stderr
    assert "JSON" not in stderr or "--raw" not in data
