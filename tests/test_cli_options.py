"""A bad option or variable of any command exits 2 naming it as the user gave
it (``--flag`` or ``CIRCUS_EVENTS_VARIABLE``), never an internal key."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import run

BAD_SIZE = {"CIRCUS_EVENTS_MAX_MESSAGE_BYTES": "abc"}
LONG = "a" * 100

#: (arguments after the command's --dir, variables, what stderr says)
CASES = {
    "publish-env": (["publish", "t", "1"], BAD_SIZE, "CIRCUS_EVENTS_MAX_MESSAGE_BYTES: 'abc'"),
    "tail-env": (["tail", "t"], BAD_SIZE, "CIRCUS_EVENTS_MAX_MESSAGE_BYTES: 'abc'"),
    "listener-env": (["supervisor-listener"], BAD_SIZE, "CIRCUS_EVENTS_MAX_MESSAGE_BYTES: 'abc'"),
    "publish-namespace": (["publish", "--namespace", "../x", "t", "1"], {}, "--namespace: '../x'"),
    "publish-host": (["publish", "--host", "a\x01", "t", "1"], {}, "--host: worker id"),
    "tail-host-env": (["tail", "t"], {"CIRCUS_EVENTS_HOST": "a\x01"}, "CIRCUS_EVENTS_HOST: "),
    "publish-timeout": (["publish", "--timeout", "-1", "t", "1"], {}, "'--timeout'"),
    "publish-timeout-0": (["publish", "--timeout", "0", "t", "1"], {}, "'--timeout': 0.0"),
    "publish-timeout-nan": (["publish", "--timeout", "nan", "t", "1"], {}, "--timeout: "),
    "tail-count-0": (["tail", "--count", "0", "t"], {}, "'--count': 0"),
    "tail-count-negative": (["tail", "--count", "-1", "t"], {}, "'--count': -1"),
    "bridge-namespace-long": (
        ["bridge", "--namespace", LONG],
        {},
        "--dir and --namespace: ",
    ),
    "publish-namespace-long-env": (
        ["publish", "t", "1"],
        {"CIRCUS_EVENTS_NAMESPACE": LONG},
        "--dir and CIRCUS_EVENTS_NAMESPACE: ",
    ),
}


@pytest.mark.parametrize(("args", "env", "says"), CASES.values(), ids=CASES.keys())
def test_a_bad_value_is_named_as_given(
    short_tmp: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    result = run(args[0], "--dir", str(short_tmp), *args[1:], env=env, stdin="")
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_long_namespace_is_blamed_with_the_folder(short_tmp: Path) -> None:
    result = run("bridge", "--dir", str(short_tmp), "--namespace", LONG)
    assert "choose a shorter directory or namespace" in result.stderr, result.stderr
    default = run("bridge", "--dir", str(short_tmp / ("d" * 100)))
    assert "--dir: " in default.stderr and default.stderr.rstrip().endswith(
        "choose a shorter directory"
    )


@pytest.mark.parametrize("option", ["--dir", "--namespace", "--host"])
@pytest.mark.parametrize("command", ["bridge", "tail", "publish", "status", "leaders"])
def test_an_empty_folder_namespace_or_host_is_refused(command: str, option: str) -> None:
    if option == "--host" and command in ("status", "leaders"):
        return  # they take no --host (test_cli_status)
    args = {"tail": ["t"], "publish": ["t", "1"]}.get(command, [])
    result = run(command, option, "", *args)
    assert result.returncode == 2, result.stderr
    assert f"'{option}': must not be empty" in result.stderr, result.stderr


@pytest.mark.parametrize("only", [[], ["--paced"], ["--websocket"]], ids=["all", "paced", "ws"])
def test_bench_refuses_an_out_file_before_it_runs(short_tmp: Path, only: list[str]) -> None:
    out = short_tmp / "results"
    out.write_text("not a folder")
    result = run("bench", "--smoke", *only, "--out", str(out), timeout=20)
    assert result.returncode == 2, result.stderr
    assert f"--out: '{out}' is a file, not a folder" in result.stderr, result.stderr
    assert out.read_text() == "not a folder"
