"""A second local user attacks a root bridge's socket folder: every attack is refused.

Runs as root (CI does): a session fixture creates an attacker, a member of a
test group and that group with ``useradd``/``groupadd``, and removes them
with ``userdel -r``/``groupdel`` whatever happens. Each attack runs a small
Python snippet as the other user (``setpriv``) against a root bridge started
as a real process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from conftest import CIRCUS_SECTION, BridgeProcess

from circus_events import Bus, UnsafePathError
from circus_events._client_core import ClientOptions
from circus_events._config import ROOT_DEFAULT_DIR, default_dir
from circus_events._sockdir import (
    GROUP_DIR_MODE,
    MAX_SYMLINK_HOPS,
    PRIVATE_DIR_MODE,
    check_client_dir,
    prepare_bridge_dir,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="creates local users: needs root (CI runs as root)"
)

REPO = Path(__file__).resolve().parent.parent
SOCKETS = ("in.sock", "out.sock", "ctl.sock")
TARGET_TEXT = b"root's precious file\n"

#: As the other user: try to connect to each ipc socket path given.
CONNECT = """
import json, socket, sys
result = {}
for path in sys.argv[1:]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        result[path] = "connected"
    except OSError as exc:
        result[path] = type(exc).__name__
    finally:
        sock.close()
print(json.dumps(result))
"""

#: As the other user: open a Bus on the folder; print the error it raises, if any.
OPEN_BUS = """
import json, sys
from circus_events import Bus, CircusEventsError
try:
    Bus(dir=sys.argv[1], worker="other").close()
except CircusEventsError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"error": None}))
"""

#: As the other user: try to make a folder.
TRY_MKDIR = """
import json, os, sys
try:
    os.mkdir(sys.argv[1])
    print(json.dumps("made"))
except OSError as exc:
    print(json.dumps(type(exc).__name__))
"""

#: As a group member: subscribe, publish, get our own event back through the
#: bridge, then wait for one from root.
MEMBER = """
import json, sys
from circus_events import Bus
with Bus(dir=sys.argv[1], worker="member", echo=True) as bus:
    sub = bus.subscribe("grp.*")
    assert bus.sync(20), "the bridge never applied the subscription"
    bus.publish("grp.member", {"from": "member"})
    got = []
    while len(got) < 2:
        event = sub.get(timeout=20)
        got.append([event.channel, event.data])
print(json.dumps(got))
"""


@dataclasses.dataclass(frozen=True)
class LocalUsers:
    """The users the attacks need and how to run Python as them."""

    attacker: str
    member: str
    group: str
    home: Path
    python: str
    pythonpath: str

    def run(self, user: str, code: str, *args: str, timeout: float = 60) -> Any:
        """Run ``code`` as ``user``; its last stdout line, parsed as JSON."""
        process = self.popen(user, "-c", code, *args)
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    def popen(self, user: str, *argv: str) -> subprocess.Popen[str]:
        """``python *argv`` as ``user``, with this checkout importable."""
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home / user), "LANG": "C.UTF-8"}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return subprocess.Popen(
            [*cmd, self.python, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd="/",
        )


def _others_can_reach(path: str) -> bool:
    """Every folder above ``path`` lets others through and ``path`` lets them read."""
    real = os.path.realpath(path)
    parts = Path(real).parents
    if not all(os.stat(p).st_mode & stat.S_IXOTH for p in parts):
        return False
    return bool(os.stat(real).st_mode & stat.S_IROTH)


#: What a worker or bridge run as another user imports from site-packages (libzmq comes
#: inside ``pyzmq.libs``; the codecs are optional and copied when installed).
OTHERS_PACKAGES: Final = ("zmq", "pyzmq.libs", "click", "orjson", "msgpack")


def _interpreter_for_others(runtime: Path) -> tuple[str, str]:
    """This venv's Python if other users can run it; else the system's same version
    with a copy of the package and what it imports in ``runtime``, which others
    can read (a checkout or venv under a private folder, such as CI's clone or
    /root, is out of their reach)."""
    if _others_can_reach(sys.executable) and all(_others_can_reach(p) for p in sys.path if p):
        return sys.executable, ""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system is None or not _others_can_reach(system):
        pytest.fail(
            f"these tests run workers as other users and need {version} outside root's "
            f"folders: install it (apt-get install {version})"
        )
    site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    shutil.copytree(REPO / "circus_events", runtime / "circus_events")
    for name in OTHERS_PACKAGES:
        if (site / name).is_dir():
            shutil.copytree(site / name, runtime / name)
    for folder, _, files in os.walk(runtime):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)
    # The same CPython version loads the venv's compiled wheels.
    return system, str(runtime)


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"


@pytest.fixture(scope="session")
def users() -> Iterator[LocalUsers]:
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    suffix = secrets.token_hex(3)
    group, attacker, member = f"cegrp{suffix}", f"ceatk{suffix}", f"cemem{suffix}"
    home = Path(tempfile.mkdtemp(prefix="ce-home-", dir="/tmp"))
    home.chmod(0o755)
    runtime = home / "runtime"
    python, pythonpath = _interpreter_for_others(runtime)
    made_users: list[str] = []
    made_group = False
    try:
        _run("groupadd", group)
        made_group = True
        for name, extra in ((attacker, ()), (member, ("-G", group))):
            _run("useradd", "-m", "-d", str(home / name), "-s", "/bin/sh", *extra, name)
            made_users.append(name)
        yield LocalUsers(attacker, member, group, home, python, pythonpath)
    finally:
        for name in made_users:
            subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        if made_group:
            subprocess.run(["groupdel", group], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def arena() -> Iterator[Path]:
    """A root-owned folder others may enter, with ``pub/``: world-writable and sticky, as /tmp."""
    base = Path(tempfile.mkdtemp(prefix="ce-sec-", dir="/tmp"))
    base.chmod(0o755)
    (base / "pub").mkdir()
    (base / "pub").chmod(0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def target(arena: Path) -> Path:
    """A root-owned file an attacker would like root to overwrite."""
    path = arena / "target.txt"
    path.write_bytes(TARGET_TEXT)
    path.chmod(0o644)
    return path


def _untouched(path: Path) -> None:
    st = os.lstat(path)
    assert path.read_bytes() == TARGET_TEXT
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 0, 0)


def _bridge_refuses(directory: Path, *args: str) -> str:
    """Start a root bridge on ``directory``: it must exit 2; its message."""
    done = subprocess.run(
        [sys.executable, "-m", "circus_events", "bridge", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stderr


def _as_attacker_mkdir(users: LocalUsers, path: Path, mode: int = 0o777) -> None:
    code = "import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], int(sys.argv[2]))"
    users.run(users.attacker, code + "; print('{}')", str(path), str(mode))
    assert os.lstat(path).st_uid != 0


# -- 1. another user creates the folder first --------------------------------


def test_root_default_is_a_folder_only_root_can_create(users: LocalUsers) -> None:
    assert default_dir() == ROOT_DEFAULT_DIR == "/run/circus-events"
    probe = f"/run/circus-events-probe-{secrets.token_hex(3)}"
    try:
        result = users.run(users.attacker, TRY_MKDIR, probe)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)
    assert result == "PermissionError"


def test_non_root_default_is_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/user/1000/circus-events"
    assert default_dir({}) == "/tmp/circus-events-1000"
    assert default_dir({"XDG_RUNTIME_DIR": "relative"}) == "/tmp/circus-events-1000"


def test_socket_folder_created_by_another_user_is_refused(users: LocalUsers, arena: Path) -> None:
    taken = arena / "pub" / "circus-events-0"  # the old default, made first by the attacker
    _as_attacker_mkdir(users, taken)
    message = _bridge_refuses(taken)
    assert str(taken) in message and users.attacker in message
    assert "owned by" in message and "Fix:" in message
    assert os.listdir(taken) == []


def test_namespace_folder_created_by_another_user_is_refused(
    users: LocalUsers, arena: Path
) -> None:
    namespace = arena / "pub" / "default"
    _as_attacker_mkdir(users, namespace)
    message = _bridge_refuses(arena / "pub")
    assert str(namespace) in message and users.attacker in message and "Fix:" in message
    assert os.listdir(namespace) == []


def test_group_writable_socket_folder_is_refused(arena: Path) -> None:
    folder = arena / "sock"
    folder.mkdir()
    folder.chmod(0o775)
    message = _bridge_refuses(folder)
    assert str(folder) in message and "writable by group" in message and "chmod g-w" in message
    assert not (folder / "default").exists()


def test_fallback_folder_of_a_non_root_bridge_is_checked_too(
    users: LocalUsers, arena: Path
) -> None:
    """Without XDG_RUNTIME_DIR a user's default is in /tmp: taken first, it is refused."""
    import pwd  # noqa: PLC0415

    uid = pwd.getpwnam(users.member).pw_uid
    taken = arena / "pub" / f"circus-events-{uid}"
    _as_attacker_mkdir(users, taken)
    bridge = users.popen(users.member, "-m", "circus_events", "bridge", "--dir", str(taken))
    _out, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 2, err
    assert str(taken) in err and users.attacker in err and "Traceback" not in err
    assert os.listdir(taken) == []


def test_ancestor_links_of_root_are_followed_those_of_others_refused(
    users: LocalUsers, arena: Path
) -> None:
    real = arena / "real"
    real.mkdir(mode=0o755)
    (arena / "via-root").symlink_to(real)  # as /var/run -> /run
    prepare_bridge_dir(str(arena / "via-root" / "s"), str(arena / "via-root" / "s" / "ns"))
    assert stat.S_IMODE(os.lstat(real / "s" / "ns").st_mode) == PRIVATE_DIR_MODE
    planted = arena / "pub" / "via-attacker"
    code = "import os, sys; os.symlink(sys.argv[1], sys.argv[2]); print('{}')"
    users.run(users.attacker, code, str(real), str(planted))
    with pytest.raises(UnsafePathError, match="symbolic link owned by"):
        prepare_bridge_dir(str(planted / "t"), str(planted / "t" / "ns"))
    assert not (real / "t").exists()


def test_ancestor_links_are_followed_up_to_the_limit(arena: Path) -> None:
    """MAX_SYMLINK_HOPS links in one path are fine; one more (or a loop) is refused."""
    hops = MAX_SYMLINK_HOPS + 1
    for n in range(hops + 1):
        (arena / f"r{n}").mkdir()
        if n:
            (arena / f"r{n - 1}" / "n").symlink_to(arena / f"r{n}")
    at_limit = arena.joinpath("r0", *["n"] * MAX_SYMLINK_HOPS, "s")
    prepare_bridge_dir(str(at_limit), str(at_limit / "ns"))
    past = arena.joinpath("r0", *["n"] * hops, "s")
    with pytest.raises(UnsafePathError, match="symbolic link too many"):
        prepare_bridge_dir(str(past), str(past / "ns"))
    assert not (arena / f"r{hops}" / "s").exists()
    (arena / "loop").symlink_to(arena / "loop")
    with pytest.raises(UnsafePathError, match="symbolic link too many"):
        prepare_bridge_dir(str(arena / "loop" / "s"), str(arena / "loop" / "s" / "ns"))


def test_world_writable_folder_above_is_refused_unless_root_owned_and_sticky(
    arena: Path,
) -> None:
    loose = arena / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable by every user"):
        prepare_bridge_dir(str(loose / "s"), str(loose / "s" / "ns"))
    assert os.listdir(loose) == []
    prepare_bridge_dir(str(arena / "pub"), str(arena / "pub" / "ns"))  # as dir = /tmp


@pytest.mark.parametrize("kind", ["fifo", "foreign"])
def test_lock_that_is_not_our_plain_file_is_refused(
    users: LocalUsers, arena: Path, kind: str
) -> None:
    import pwd  # noqa: PLC0415

    namespace = arena / "sock" / "default"
    namespace.mkdir(parents=True)
    lock = namespace / "bridge.lock"
    if kind == "fifo":
        os.mkfifo(lock)  # opening it for writing must not hang the bridge
    else:
        lock.write_bytes(b"")
        os.chown(lock, pwd.getpwnam(users.attacker).pw_uid, -1)
    message = _bridge_refuses(arena / "sock")
    expected = "is not a regular file" if kind == "fifo" else f"is owned by {users.attacker}"
    assert f"{lock} {expected}" in message


# -- 2. a planted bridge.lock link ------------------------------------------


def test_lock_link_in_a_folder_of_another_user_is_refused(
    users: LocalUsers, arena: Path, target: Path
) -> None:
    namespace = arena / "pub" / "default"
    _as_attacker_mkdir(users, namespace)
    code = "import os, sys; os.symlink(sys.argv[1], sys.argv[2]); print('{}')"
    users.run(users.attacker, code, str(target), str(namespace / "bridge.lock"))
    message = _bridge_refuses(arena / "pub")
    assert str(namespace) in message
    _untouched(target)
    assert os.listdir(namespace) == ["bridge.lock"]


def test_lock_link_in_our_own_folder_is_not_followed(arena: Path, target: Path) -> None:
    namespace = arena / "sock" / "default"
    namespace.mkdir(parents=True)
    (namespace / "bridge.lock").symlink_to(target)
    message = _bridge_refuses(arena / "sock")
    assert f"{namespace / 'bridge.lock'} is a symbolic link" in message
    _untouched(target)
    assert os.listdir(namespace) == ["bridge.lock"]


def test_lock_hard_link_is_refused(arena: Path, target: Path) -> None:
    namespace = arena / "sock" / "default"
    namespace.mkdir(parents=True)
    os.link(target, namespace / "bridge.lock")
    message = _bridge_refuses(arena / "sock")
    assert "2 hard links" in message
    _untouched(target)


# -- 3. the namespace folder as a link --------------------------------------


@pytest.mark.parametrize("planted_by", ["attacker", "root"])
def test_namespace_link_is_refused_and_its_target_untouched(
    users: LocalUsers, arena: Path, planted_by: str
) -> None:
    victim = arena / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "keep.txt").write_bytes(TARGET_TEXT)
    link = arena / "pub" / "default"
    if planted_by == "root":
        link.symlink_to(victim)
    else:
        code = "import os, sys; os.symlink(sys.argv[1], sys.argv[2]); print('{}')"
        users.run(users.attacker, code, str(victim), str(link))
    message = _bridge_refuses(arena / "pub")
    assert f"{link} is a symbolic link" in message
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    assert (victim.stat().st_uid, victim.stat().st_gid) == (0, 0)
    assert os.listdir(victim) == ["keep.txt"]


# -- 4. the plugin log as a link --------------------------------------------


@pytest.fixture
def package_logger() -> Iterator[logging.Logger]:
    """The package logger, restored (and the handlers a test added closed) afterwards."""
    logger = logging.getLogger("circus_events")
    handlers, level = list(logger.handlers), logger.level
    try:
        yield logger
    finally:
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)


def test_plugin_log_link_is_not_followed(
    arena: Path, target: Path, package_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    from circus_events.plugin import LOG_FILE_NAME, _log_to_file  # noqa: PLC0415

    folder = arena / "sock"
    folder.mkdir(mode=0o700)
    log_file = folder / LOG_FILE_NAME
    log_file.symlink_to(target)
    before = list(package_logger.handlers)
    _log_to_file(str(log_file), str(folder))
    package_logger.error("written through the link?")
    _untouched(target)
    assert package_logger.handlers == before
    assert f"{log_file} is a symbolic link" in caplog.text


def test_plugin_log_in_a_folder_of_another_user_is_not_written(
    users: LocalUsers, arena: Path, package_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    from circus_events.plugin import LOG_FILE_NAME, _log_to_file  # noqa: PLC0415

    folder = arena / "pub" / "taken"
    _as_attacker_mkdir(users, folder)
    _log_to_file(str(folder / LOG_FILE_NAME), str(folder))
    package_logger.error("secret")
    assert os.listdir(folder) == []
    assert "owned by" in caplog.text


def test_plugin_log_is_our_private_file(arena: Path, package_logger: logging.Logger) -> None:
    from circus_events.plugin import LOG_FILE_NAME, _log_to_file  # noqa: PLC0415

    folder = arena / "fresh"  # missing: created as the bridge creates its folder
    _log_to_file(str(folder / LOG_FILE_NAME), str(folder))
    package_logger.error("hello log")
    for handler in package_logger.handlers:
        handler.flush()
    st = os.lstat(folder / LOG_FILE_NAME)
    assert stat.S_IMODE(os.lstat(folder).st_mode) == PRIVATE_DIR_MODE
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink) == (0o600, 0, 1)
    assert "hello log" in (folder / LOG_FILE_NAME).read_text()


# -- 5. no event readable by the other user ---------------------------------


def test_other_user_cannot_reach_the_sockets_of_a_root_bridge(
    users: LocalUsers, arena: Path
) -> None:
    folder = arena / "sock"
    folder.mkdir(mode=0o755)  # others may enter the socket folder itself
    bridge = BridgeProcess(folder)
    bridge.start()
    try:
        namespace = folder / "default"
        assert stat.S_IMODE(namespace.stat().st_mode) == PRIVATE_DIR_MODE
        paths = [str(namespace / name) for name in SOCKETS]
        for path in paths:
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert set(users.run(users.attacker, CONNECT, *paths).values()) == {"PermissionError"}
        # Even with the namespace folder opened up, the sockets' own mode holds.
        namespace.chmod(0o755)
        assert set(users.run(users.attacker, CONNECT, *paths).values()) == {"PermissionError"}
        assert bridge.status() is not None
    finally:
        bridge.stop()


# -- 6. clients refuse a folder of another user -----------------------------


def test_client_refuses_a_folder_owned_by_another_user(users: LocalUsers, arena: Path) -> None:
    taken = arena / "pub" / "taken"
    _as_attacker_mkdir(users, taken, 0o755)
    for make in (lambda: Bus(dir=str(taken)), lambda: ClientOptions.resolve(dir=str(taken))):
        with pytest.raises(UnsafePathError) as caught:
            make()
        assert str(taken) in str(caught.value) and users.attacker in str(caught.value)
        assert "this client refuses it" in str(caught.value)
    status = subprocess.run(
        [sys.executable, "-m", "circus_events", "status", "--dir", str(taken)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert status.returncode == 2 and "this client refuses it" in status.stderr
    # A non-root client refuses it too.
    result = users.run(users.member, OPEN_BUS, str(taken))
    assert result["error"] == "UnsafePathError" and str(taken) in result["message"]


def test_client_refuses_a_namespace_folder_of_another_user(users: LocalUsers, arena: Path) -> None:
    _as_attacker_mkdir(users, arena / "pub" / "default", 0o755)
    with pytest.raises(UnsafePathError, match="owned by"):
        Bus(dir=str(arena / "pub"))


def test_client_accepts_a_missing_folder_for_the_bridge_to_make(arena: Path) -> None:
    check_client_dir(str(arena / "not-yet" / "default"))


# -- 7. group ---------------------------------------------------------------


def test_group_member_publishes_and_subscribes_non_member_cannot(
    users: LocalUsers, arena: Path
) -> None:
    folder = arena / "g"
    folder.mkdir(mode=0o700)  # made before without the group: the bridge lets the group in
    bridge = BridgeProcess(folder, args=("--group", users.group))
    bridge.start()
    try:
        import grp  # noqa: PLC0415

        gid = grp.getgrnam(users.group).gr_gid
        namespace = folder / "default"
        for path, mode in ((folder, GROUP_DIR_MODE), (namespace, GROUP_DIR_MODE)):
            st = os.lstat(path)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, gid)
        for name in SOCKETS:
            st = os.lstat(namespace / name)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, gid)

        with Bus(dir=str(folder), worker="root-side") as root_bus:
            from_member = root_bus.subscribe("grp.member")
            assert root_bus.sync(20)
            member = users.popen(users.member, "-c", MEMBER, str(folder))
            try:
                event = from_member.get(timeout=30)
                assert (event.channel, event.data) == ("grp.member", {"from": "member"})
                root_bus.publish("grp.root", {"from": "root"})
                out, err = member.communicate(timeout=60)
            finally:
                if member.poll() is None:
                    member.kill()
                    member.communicate()
            assert member.returncode == 0, err[-3000:]
            got = json.loads(out.strip().splitlines()[-1])
            assert got == [["grp.member", {"from": "member"}], ["grp.root", {"from": "root"}]]

        paths = [str(namespace / name) for name in SOCKETS]
        assert set(users.run(users.attacker, CONNECT, *paths).values()) == {"PermissionError"}
        refused = users.run(users.attacker, OPEN_BUS, str(folder))
        assert refused["error"] == "UnsafePathError" and "member" in refused["message"]
        assert set(users.run(users.member, CONNECT, *paths).values()) == {"connected"}
    finally:
        bridge.stop()


def test_unknown_group_exits_2_before_anything_is_made(arena: Path) -> None:
    folder = arena / "sock"
    name = f"no-such-group-{secrets.token_hex(3)}"
    message = _bridge_refuses(folder, "--group", name)
    assert "group: " in message and name in message
    assert not folder.exists()


# -- the plugin: the same checks, the same message, workers under another uid ---

CIRCUS = (
    CIRCUS_SECTION
    + """
[env]
CIRCUS_EVENTS_DIR = {sockets}

[plugin:events]
use = circus_events.plugin.EventsPlugin
dir = $(circus.env.CIRCUS_EVENTS_DIR)
"""
)

#: circus runs this watcher as the member (uid/gid), its groups set by initgroups.
MEMBER_WATCHER = """
[watcher:member]
cmd = {python} {script}
numprocesses = 1
uid = {member}
gid = {member}
working_dir = /
copy_env = False
graceful_timeout = 5

[env:member]
PYTHONPATH = {pythonpath}
HOME = {home}
"""

#: A worker under another uid: answers every grp.ping with its uid.
PONG_WORKER = """
import os
from circus_events import Bus
with Bus(worker=f"uid-{os.getuid()}") as bus:  # the folder comes from CIRCUS_EVENTS_DIR
    pings = bus.subscribe("grp.ping")
    for ping in pings:
        bus.publish("grp.pong", {"uid": os.getuid(), "n": ping.data})
"""


@contextlib.contextmanager
def _circusd(arena: Path, sockets: Path, extra: str) -> Iterator[Path]:
    """A real circusd as root with the events plugin; yields its log file."""
    from conftest import free_port  # noqa: PLC0415

    ini = arena / "circus.ini"
    ports = {"endpoint": free_port(), "pubsub": free_port(), "stats": free_port()}
    ini.write_text(CIRCUS.format(sockets=sockets, **ports) + extra)
    log_file = arena / "circusd.log"
    circusd = Path(sys.executable).parent / "circusd"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(circusd), "--log-output", str(log_file), str(ini)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log_file
    finally:
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)  # anything circusd left behind
        process.wait(10)


def test_plugin_logs_why_it_refuses_a_folder(users: LocalUsers, arena: Path) -> None:
    from conftest import wait_until  # noqa: PLC0415

    taken = arena / "pub" / "taken"
    _as_attacker_mkdir(users, taken)
    plugin_log = arena / "plugin.log"
    with _circusd(arena, taken, f"log_file = {plugin_log}\n"):
        expected = f"the events bridge cannot start: dir: {taken} is owned by"
        wait_until(lambda: plugin_log.exists() and expected in plugin_log.read_text(), 60, expected)
    assert users.attacker in plugin_log.read_text()
    assert os.listdir(taken) == []


def test_circus_worker_under_another_uid_uses_the_bus_with_group(
    users: LocalUsers, arena: Path
) -> None:
    import pwd  # noqa: PLC0415

    from conftest import wait_until  # noqa: PLC0415

    script = arena / "pong.py"
    script.write_text(PONG_WORKER)
    script.chmod(0o644)
    sockets = arena / "s"
    watcher = MEMBER_WATCHER.format(
        python=users.python,
        script=script,
        member=users.member,
        pythonpath=users.pythonpath or "",
        home=users.home / users.member,
    )
    with _circusd(arena, sockets, f"group = {users.group}\n" + watcher) as log:
        wait_until(lambda: (sockets / "default" / "ctl.sock").exists(), 30, "the plugin's bridge")
        with Bus(dir=str(sockets), worker="root-side") as bus:
            pongs = bus.subscribe("grp.pong")
            assert bus.sync(20)
            answer: list[Any] = []

            def pinged() -> bool:  # the worker may still be starting: ping until it answers
                bus.publish("grp.ping", len(answer))
                with contextlib.suppress(queue.Empty, TimeoutError):  # either, until unified
                    answer.append(pongs.get(timeout=0.5).data)
                return bool(answer)

            wait_until(pinged, 60, f"a pong from the worker (see {log})")
    assert answer[0]["uid"] == pwd.getpwnam(users.member).pw_uid
