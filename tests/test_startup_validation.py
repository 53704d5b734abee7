"""Acceptance, issue 11 point 4: strict, fast startup.

Every option, flag and variable given each kind of bad value: the real
``circus-events bridge`` process exits 2 in under :data:`LIMIT` seconds,
stderr names the key as it was given (``--flag`` or ``CIRCUS_EVENTS_X``),
nothing is left in the socket directory (not even the directory) and no
process of its session survives. One row per case; the rows run a few at a
time (each is timed on its own), then each is asserted as its own test.

Then the same through the plugin (``parse_plugin_options``) and the typed
config, the limits themselves, and the good paths: a password from the
environment or ``--redis-url-file`` is used and never shown.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import pytest
from conftest import BridgeProcess, RedisServer, wait_until

from circus_events._config import ENVIRONMENT, NUMERIC_OPTIONS, BridgeConfig, NumberSpec
from circus_events._exceptions import ConfigError
from circus_events.cli import bridge as bridge_command
from circus_events.plugin import PLUGIN_NUMERIC_OPTIONS, parse_plugin_options

#: A bad value must be refused this fast (the issue's bound).
LIMIT = 2.0
#: Rows run this many at a time: the machine is shared, and each row is timed alone.
PARALLEL = 3
CLI = [sys.executable, "-m", "circus_events", "bridge"]
#: Placeholders in a row, filled in by the fixture.
FILES = "{files}"
SOCKETS = "{sockets}"


@dataclasses.dataclass(frozen=True)
class Row:
    """One bad value: the arguments and variables, and the key stderr must name."""

    id: str
    key: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: A part of the message, where the kind of problem matters.
    says: str = ""


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _number_rows(option: str, spec: NumberSpec) -> list[Row]:
    flag = _flag(option)
    whole = spec.kind is int
    values = {
        "not-a-number": ("lots", "not a"),
        "negative": ("-1", "below the minimum"),
        "inf": ("inf", "not a whole number" if whole else "not a finite number"),
        "nan": ("nan", "not a whole number" if whole else "not a finite number"),
        "huge": ("99999999999", "above the maximum"),
        "enormous": ("9" * 400, "above the maximum"),
        "above-max": (str(spec.maximum * 2), "above the maximum"),
        "wrong-type": ("1.5" if whole else "true", "not a"),
        "empty": ("", "not a"),
    }
    if spec.minimum > 0:
        values["zero"] = ("0", "below the minimum")
    return [
        Row(f"{flag}={kind}", flag, (flag, value), says=says)
        for kind, (value, says) in values.items()
    ]


def _url(value: str, kind: str, says: str = "") -> Row:
    return Row(f"--redis-url={kind}", "--redis-url", ("--redis-url", value), says=says)


def _env(name: str, value: str, kind: str, says: str = "") -> Row:
    return Row(f"{name}={kind}", name, env=((name, value),), says=says)


ROWS: list[Row] = [
    *(row for option, spec in NUMERIC_OPTIONS.items() for row in _number_rows(option, spec)),
    # Text options.
    Row("--namespace=slash", "--namespace", ("--namespace", "a/b"), says="must be letters"),
    Row("--namespace=dot", "--namespace", ("--namespace", ".hidden")),
    Row("--namespace=empty", "--namespace", ("--namespace", "")),
    Row("--host=control-char", "--host", ("--host", "bad\x01host"), says="forbidden"),
    Row("--ignore-hosts=control-char", "--ignore-hosts", ("--ignore-hosts", "a,b\x02")),
    Row("--group=missing", "--group", ("--group", "no-such-group-x"), says="no group"),
    Row("--mode=unknown", "--mode", ("--mode", "carrier-pigeon")),
    Row("--dir=too-long", "--dir", ("--dir", "/tmp/" + "d" * 120), says="too long"),
    Row("unknown-flag", "--bogus", ("--bogus", "1")),
    # The whole Redis URL.
    _url("http://h", "scheme", "scheme 'http'"),
    _url("redis+sentinel://h:26379/m", "sentinel", "not supported yet"),
    _url("redis+cluster://h:7000", "cluster", "not supported yet"),
    _url("localhost:6379", "not-a-url", "not a URL"),
    _url("redis://", "no-host", "no host"),
    _url("redis://ho!st", "bad-host", "not a host name"),
    _url("redis://h:99999", "port-range", "port"),
    _url("redis://h:0", "port-zero", "port"),
    _url("redis://h:abc", "port-not-a-number", "port"),
    _url("redis://h/x", "db-not-a-number", "database"),
    _url("redis://h/-1", "db-negative", "database"),
    _url("redis://h/99999999999", "db-huge", "database"),
    _url("redis://h?db=1.5", "db-wrong-type", "database"),
    _url("unix://", "unix-no-path", "socket path"),
    _url("unix://var/run/redis.sock", "unix-host", "three slashes"),
    _url("unix://" + "/x" * 60, "unix-path-too-long", "limit"),
    _url("redis://h?foo=1", "unknown-param", "unknown query parameter 'foo'"),
    _url("redis://h?db=1&db=2", "param-twice", "twice"),
    _url("rediss://h?ssl_cert_reqs=maybe", "bad-ssl-cert-reqs", "ssl_cert_reqs"),
    _url("redis://h?ssl_cert_reqs=none", "ssl-without-tls", "rediss://"),
    _url(f"rediss://h?ssl_ca_certs={FILES}/missing.pem", "missing-ca", "ssl_ca_certs"),
    _url(f"rediss://h?ssl_ca_certs={FILES}/garbage.pem", "garbage-ca", "holds no PEM certificate"),
    _url(f"rediss://h?ssl_ca_certs={FILES}", "ca-is-a-directory", "not a file"),
    _url(f"rediss://h?ssl_certfile={FILES}/missing.pem", "missing-certfile", "ssl_certfile"),
    _url("redis://:hunter2@h:6379/0", "password", "visible to every user in `ps`"),
    _url("redis://u:hunter2@h", "user-password", "--redis-url-file"),
    _url("redis://h?password=hunter2", "query-password", "contains a password"),
    _url("redis://h/" + "0" * 5000, "too-long", "longer than"),
    # The URL from a file.
    Row("--redis-url-file=missing", "--redis-url-file", ("--redis-url-file", f"{FILES}/nope")),
    Row("--redis-url-file=empty", "--redis-url-file", ("--redis-url-file", f"{FILES}/empty")),
    Row(
        "--redis-url-file=fifo",
        "--redis-url-file",
        ("--redis-url-file", f"{FILES}/fifo"),
        says="is a FIFO (named pipe), not a regular file",
    ),
    Row(
        "--redis-url-file=bad-url",
        "--redis-url-file",
        ("--redis-url-file", f"{FILES}/bad-url"),
        says="unknown query parameter",
    ),
    Row(
        "--redis-url-file=with-flag",
        "--redis-url-file",
        ("--redis-url", "redis://h", "--redis-url-file", f"{FILES}/good-url"),
        says="either",
    ),
    # Variables.
    _env("CIRCUS_EVENTS_REDIS_URL", "redis://h?sentinel=1", "unknown-param", "'sentinel'"),
    _env("CIRCUS_EVENTS_REDIS_URL", "unix://", "unix-no-path", "socket path"),
    _env("CIRCUS_EVENTS_REDIS_URL", "redis://h:70000/1", "port-range", "port"),
    _env("CIRCUS_EVENTS_REDIS_URL", f"rediss://h?ssl_ca_certs={FILES}/x.pem", "missing-ca"),
    _env("CIRCUS_EVENTS_MAX_MESSAGE_BYTES", "inf", "inf"),
    _env("CIRCUS_EVENTS_MAX_MESSAGE_BYTES", "nan", "nan"),
    _env("CIRCUS_EVENTS_MAX_MESSAGE_BYTES", "-5", "negative"),
    _env("CIRCUS_EVENTS_MAX_MESSAGE_BYTES", "0", "zero"),
    _env("CIRCUS_EVENTS_MAX_MESSAGE_BYTES", "1e12", "wrong-type"),
    _env("CIRCUS_EVENTS_MAX_MESSAGE_BYTES", "99999999999", "huge", "above the maximum"),
    _env("CIRCUS_EVENTS_MODE", "carrier-pigeon", "unknown"),
    _env("CIRCUS_EVENTS_NAMESPACE", "../up", "slash"),
    _env("CIRCUS_EVENTS_HOST", "tab\there", "control-char"),
    _env("CIRCUS_EVENTS_DIR", "/tmp/" + "d" * 120, "too-long", "too long"),
]


@dataclasses.dataclass
class Outcome:
    code: int
    elapsed: float
    stderr: str
    left_behind: list[str]
    survivors: list[int]


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the bridge runs as a session leader)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _fill(text: str, files: Path, sockets: Path) -> str:
    return text.replace(FILES, str(files)).replace(SOCKETS, str(sockets))


def _run(row: Row, files: Path, base: Path) -> Outcome:
    """Run a row; one slow run is run again (the machine is shared: a real slowness repeats)."""
    outcome = _run_once(row, files, base)
    if outcome.elapsed >= LIMIT:
        again = _run_once(row, files, base)
        outcome = min(outcome, again, key=lambda o: o.elapsed)
    return outcome


def _run_once(row: Row, files: Path, base: Path) -> Outcome:
    sockets = base / "sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
    env["CIRCUS_EVENTS_DIR"] = str(sockets)
    env.update({name: _fill(value, files, sockets) for name, value in row.env})
    args = [_fill(arg, files, sockets) for arg in row.args]
    if not any(name == "CIRCUS_EVENTS_DIR" for name, _ in row.env) and "--dir" not in args:
        args = ["--dir", str(sockets), *args]
    started = time.monotonic()
    process = subprocess.Popen(
        [*CLI, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:  # a bridge that started after all: stop it, fail the row
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    elapsed = time.monotonic() - started
    survivors = _session_members(process.pid)
    for pid in survivors:  # clean up before reporting them
        os.kill(pid, signal.SIGKILL)
    left = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    if any(name == "CIRCUS_EVENTS_DIR" for name, _ in row.env) or "--dir" in row.args:
        target = Path(dict(row.env).get("CIRCUS_EVENTS_DIR") or args[args.index("--dir") + 1])
        left += [str(target)] if target.exists() else []
    return Outcome(process.returncode, elapsed, stderr.decode(errors="replace"), left, survivors)


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    root = Path(tempfile.mkdtemp(prefix="ce-sv-", dir="/tmp"))
    try:
        files = root / "files"
        files.mkdir()
        (files / "garbage.pem").write_text("not a certificate\n")
        (files / "empty").write_text("")
        (files / "bad-url").write_text("redis://h?color=blue\n")
        (files / "good-url").write_text("redis://:secret@h\n")
        os.mkfifo(files / "fifo")  # no writer: opening it to read would block
        bases = {}
        for n, row in enumerate(ROWS):
            bases[row.id] = root / f"r{n}"
            bases[row.id].mkdir()
        with ThreadPoolExecutor(PARALLEL) as pool:
            futures = {row.id: pool.submit(_run, row, files, bases[row.id]) for row in ROWS}
            yield {row_id: future.result() for row_id, future in futures.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_rows_are_unique() -> None:
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_value_stops_the_bridge_at_once(row: Row, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[row.id]
    assert outcome.code == 2, outcome.stderr
    assert outcome.elapsed < LIMIT, f"took {outcome.elapsed:.2f}s"
    assert row.key in outcome.stderr, outcome.stderr
    assert row.says in outcome.stderr, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert "hunter2" not in outcome.stderr, "a refused password is not repeated"
    assert outcome.left_behind == [], "nothing is created: no directory, socket or lock"
    assert outcome.survivors == [], "no process is left"


def test_every_flag_and_variable_has_rows() -> None:
    """A new flag, numeric option or variable without bad-value rows fails here."""
    flags = {
        opt
        for param in bridge_command.params
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    }
    covered = {arg for row in ROWS for arg in row.args if arg.startswith("--")}
    assert flags - covered == set(), "flags without a bad-value row"
    assert {_flag(option) for option in NUMERIC_OPTIONS} <= flags, "numeric options need a flag"
    variables = {name for name, key in ENVIRONMENT.items() if key != "worker"}
    assert variables - {name for row in ROWS for name, _ in row.env} == set()


# -- the plugin's path and the typed config --------------------------------------------------


@pytest.mark.parametrize(
    ("options", "environ", "key", "says"),
    [
        ({"subscriber_hwm": "99999999999"}, {}, "subscriber_hwm", "above the maximum"),
        ({"stats_interval": "inf"}, {}, "stats_interval", "not a finite number"),
        ({"stats_interval": "nan"}, {}, "stats_interval", "not a finite number"),
        ({"stats_interval": "0"}, {}, "stats_interval", "below the minimum"),
        ({"retention": "-3"}, {}, "retention", "below the minimum"),
        ({"buffer_max_bytes": "1.5"}, {}, "buffer_max_bytes", "not a whole number"),
        ({"stream_shards": "lots"}, {}, "stream_shards", "not a whole number"),
        ({"reconcile_interval": "nan"}, {}, "reconcile_interval", "not a finite number"),
        ({"reconcile_interval": "0"}, {}, "reconcile_interval", "below the minimum"),
        ({"reconcile_interval": "1e9"}, {}, "reconcile_interval", "above the maximum"),
        ({"redis_url": "redis://h?password=x"}, {}, "redis_url", "contains a password"),
        ({"redis_url": "redis://:x@h"}, {}, "redis_url", "redis_url_file"),
        ({"redis_url": "redis://h?foo=1"}, {}, "redis_url", "unknown query parameter"),
        ({"redis_url": "unix://"}, {}, "redis_url", "socket path"),
        ({"redis_url": "redis+sentinel://h/m"}, {}, "redis_url", "not supported yet"),
        ({"redis_url_file": "/nonexistent/url"}, {}, "redis_url_file", "cannot read"),
        ({"redis_url_file": "/dev/null"}, {}, "redis_url_file", "not a regular file"),
        (
            {"redis_url": "redis://h", "redis_url_file": "/x"},
            {},
            "redis_url_file",
            "not both",
        ),
        ({"group": "no-such-group-x"}, {}, "group", "no group"),
        ({}, {"CIRCUS_EVENTS_MAX_MESSAGE_BYTES": "nan"}, "CIRCUS_EVENTS_MAX_MESSAGE_BYTES", ""),
        ({}, {"CIRCUS_EVENTS_REDIS_URL": "redis://h/x"}, "CIRCUS_EVENTS_REDIS_URL", "database"),
        ({}, {"CIRCUS_EVENTS_MODE": "x"}, "CIRCUS_EVENTS_MODE", "pubsub"),
    ],
)
def test_plugin_options_are_checked_alike(
    options: dict[str, str], environ: dict[str, str], key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_plugin_options({"dir": "/tmp/ce-plugin-x", **options}, environ)
    assert info.value.key == key and says in str(info.value), str(info.value)
    assert not os.path.exists("/tmp/ce-plugin-x")


def test_plugin_url_file_is_named_for_a_bad_url(tmp_path: Path) -> None:
    path = tmp_path / "url"
    path.write_text("redis://:pw@h?x=1\n")
    with pytest.raises(ConfigError) as info:
        parse_plugin_options({"redis_url_file": str(path)}, {})
    assert info.value.key == "redis_url_file" and "'x'" in str(info.value)
    path.write_text("redis://:pw@h:7000/3\n")
    config, _ = parse_plugin_options({"redis_url_file": str(path)}, {})
    address = config.redis_address
    assert address is not None and address.password == "pw" and address.db == 3


@pytest.mark.parametrize("value", [True, [1], {"a": 1}, b"5", object(), float("inf"), 1.5])
@pytest.mark.parametrize("option", sorted(NUMERIC_OPTIONS))
def test_typed_values_of_the_wrong_type(option: str, value: Any) -> None:
    if value == 1.5 and NUMERIC_OPTIONS[option].kind is float:
        value = "1.5x"
    with pytest.raises(ConfigError) as info:
        BridgeConfig(**{option: value})
    assert info.value.key == option


#: The options under which subscriber_max_bytes' own minimum is a valid budget.
SMALLEST_FRAMES: Final = {"max_message_bytes": "1024", "subscriber_hwm": "1"}


@pytest.mark.parametrize(
    "option", sorted({**NUMERIC_OPTIONS, **PLUGIN_NUMERIC_OPTIONS}.items()), ids=str
)
def test_each_number_at_its_limits(option: tuple[str, NumberSpec]) -> None:
    name, spec = option
    if name in NUMERIC_OPTIONS:
        # The least per-subscriber budget holds one frame of the smallest messages.
        context = SMALLEST_FRAMES if name == "subscriber_max_bytes" else {}

        def make(value: object) -> object:
            return getattr(BridgeConfig.from_options({**context, name: value}), name)

    else:

        def make(value: object) -> object:
            _, settings = parse_plugin_options({name: str(value)}, {})
            return getattr(settings, name)

    step = 1 if spec.kind is int else 0.001
    assert make(str(spec.minimum)) == spec.minimum
    assert make(str(spec.maximum)) == spec.maximum
    for bad in (spec.minimum - step, spec.maximum + step):
        with pytest.raises(ConfigError, match=name):
            make(str(bad))


def test_repr_of_a_config_hides_the_url() -> None:
    config = BridgeConfig(redis_url="redis://:hunter2@h/0")
    assert "hunter2" not in repr(config)


def test_an_empty_dir_is_refused_not_taken_as_the_current_folder() -> None:
    with pytest.raises(ConfigError, match="dir: is empty"):
        BridgeConfig.from_options({"dir": " "})


def test_a_signing_key_is_refused_while_signing_is_not_implemented() -> None:
    with pytest.raises(ConfigError, match="signing_key: message signing is not implemented"):
        BridgeConfig.from_options({"signing_key": "k3y"})
    assert BridgeConfig.from_options({"signing_key": ""}).signing_key is None


# -- the good paths: a password from the environment or a file, never shown -------------------


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circus_events", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.timeout(120)
def test_password_from_a_file_or_the_environment_is_used_and_never_shown(
    redis_factory: Callable[..., RedisServer],
    short_tmp: Path,
) -> None:
    secret = "pa55+word/x"
    redis = redis_factory(password=secret)
    quoted = "pa55%2Bword%2Fx"
    url_file = short_tmp / "redis-url"
    url_file.write_text(f"redis://:{quoted}@127.0.0.1:{redis.port}/0\n")
    url_file.chmod(0o600)
    from_file = BridgeProcess(
        short_tmp / "a", host="host-a", args=("--redis-url-file", str(url_file))
    )
    # ?password= in the variable: read the same way by the bridge and by status --all.
    from_env = BridgeProcess(
        short_tmp / "b",
        host="host-b",
        redis_url=f"redis://127.0.0.1:{redis.port}/0?password={quoted}",
    )
    try:
        for bridge in (from_file, from_env):
            bridge.start()
        for bridge in (from_file, from_env):
            wait_until(
                lambda b=bridge: b.status()["redis"]["state"] == "connected", 15, "connected"
            )
            assert bridge.process is not None
            command = Path(f"/proc/{bridge.process.pid}/cmdline").read_bytes()
            assert b"pa55" not in command, "the password is not on the command line"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_EVENTS_")}
        env["CIRCUS_EVENTS_REDIS_URL"] = from_env.redis_url or ""
        hosts: list[str] = []

        def listed() -> bool:
            result = _cli("status", "--all", "--json", "--dir", str(short_tmp / "b"), env=env)
            assert result.returncode == 0, result.stderr
            hosts[:] = sorted(r["host"] for r in json.loads(result.stdout))
            return hosts == ["host-a", "host-b"]

        wait_until(listed, 20, "both bridges in status --all")
        outputs = [
            _cli("status", "--all", "--dir", str(short_tmp / "b"), env=env),
            _cli("status", "--all", "--json", "--dir", str(short_tmp / "b"), env=env),
            _cli("status", "--dir", str(short_tmp / "a"), env=env),
            _cli("status", "--json", "--dir", str(short_tmp / "b"), env=env),
        ]
        for result in outputs:
            assert result.returncode == 0, result.stderr
            assert "***" in result.stdout, "the URL is shown, masked"
            assert "pa55" not in result.stdout + result.stderr
        wrong = dict(env, CIRCUS_EVENTS_REDIS_URL=f"redis://127.0.0.1:{redis.port}?password=w0rng")
        refused = _cli("status", "--all", env=wrong)
        assert refused.returncode == 1 and "w0rng" not in refused.stdout + refused.stderr
        assert "***" in refused.stderr, refused.stderr
        for bridge in (from_file, from_env):
            assert "pa55" not in bridge.log.read_text()
    finally:
        from_file.stop()
        from_env.stop()


_FAILED_SETUP = """
import asyncio
from circus_events._config import BridgeConfig
from circus_events.bridge.core import Bridge
config = BridgeConfig(dir=DIR, host="h")
# Past the checks, as before them: a mark libzmq's C int cannot hold (the
# byte budget, which would cap it, out of the way too).
object.__setattr__(config, "subscriber_hwm", 99999999999)
object.__setattr__(config, "subscriber_max_bytes", 10**30)
try:
    asyncio.run(Bridge(config).run())
except OverflowError:
    print("refused")
"""


def test_a_failed_socket_setup_does_not_hang(short_tmp: Path) -> None:
    """Belt and braces for the check: a setup that fails half-way exits, never hangs."""
    code = _FAILED_SETUP.replace("DIR", repr(str(short_tmp)))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.stdout.strip() == "refused", result.stderr
    assert time.monotonic() - started < 10
