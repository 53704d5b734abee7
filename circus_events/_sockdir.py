"""Checks that make the socket folder safe to use as root on a shared host.

Theory of operation
-------------------

The bridge usually runs as root (circusd does) and its sockets carry every
event of the host, so the path to them is treated as hostile until checked.
A folder is only as safe as the folders above it: whoever can write a level
can rename it away and put their own in its place. So the whole chain, from
``/`` down to the namespace folder, is walked one level at a time:

* A missing level is created with ``mkdir`` (never ``makedirs``), then opened
  with ``O_NOFOLLOW | O_DIRECTORY`` and checked with ``fstat`` before its mode
  and group are set through that descriptor: the folder we change is the
  folder we made, not whatever a race put at its path.
* An existing level is checked with ``lstat``: not a symbolic link (an
  ancestor link is followed only if root or we own it, and its target is
  checked the same way), a folder, owned by the bridge's user or by root, and
  writable by no one else, except a root-owned sticky folder such as ``/tmp``
  (there nobody can rename or delete what we own).
* The socket folder (``dir``) and the namespace folder below it belong to the
  bridge: the namespace folder must be owned by the bridge's user, and is set
  to ``0700`` (``0750`` and group ``group`` with ``group``). With ``group``
  the socket folder must let that group in; one the bridge owns is fixed.

Every accepted level is writable only by root, the bridge's user (and, for
the two folders of the bridge, by ``group``), so what was checked cannot
change under us: checking once, in order, is race-free.

Files inside (the lock, the plugin log) are opened with ``O_NOFOLLOW`` and
checked with ``fstat``: a regular file, ours, with one link. Nothing is ever
truncated or changed through a path that could be a link.

Clients run the same walk without creating anything, once at connect time
(never per message): every existing level must belong to them or to root.
A level that does not exist yet is left to the bridge, which will refuse it
if someone else makes it first. Every refusal is an :class:`UnsafePathError`
(a :class:`ConfigError`, so the CLI exits 2) naming the path, the problem and
the fix.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from typing import Final, Literal

from ._exceptions import ConfigError, UnsafePathError

__all__ = [
    "GROUP_DIR_MODE",
    "MAX_SYMLINK_HOPS",
    "PRIVATE_DIR_MODE",
    "check_client_dir",
    "group_id",
    "open_private_file",
    "prepare_bridge_dir",
    "prepare_dir",
]

#: Ancestor symbolic links followed in one path before giving up (a loop).
MAX_SYMLINK_HOPS: Final = 16
#: Mode of the folders the bridge makes: only its user...
PRIVATE_DIR_MODE: Final = 0o700
#: ...or, with ``group``, members may enter and connect (connecting to an
#: ipc socket needs write access to the socket file, not to the folder, so
#: members get no write bit: they cannot unlink or plant files).
GROUP_DIR_MODE: Final = 0o750

#: What a level is to the walk: above the socket folder, the socket folder
#: (``dir``), or the namespace folder that holds the sockets.
Role = Literal["ancestor", "dir", "namespace"]
#: The fixes that end most refusals.
_WHERE = "choose another folder with --dir, CIRCUS_EVENTS_DIR or the plugin's dir"
_NOT_A_MEMBER = (
    "if the bridge runs with group, this user must be a member of that group "
    "(log in again after being added)"
)


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def group_id(group: str) -> int:
    """The gid of ``group`` (a name or a number); ConfigError if there is none."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    if group.isdigit():
        with contextlib.suppress(KeyError):
            return grp.getgrgid(int(group)).gr_gid
    raise ConfigError(
        "group", f"group {group!r} does not exist; create it (groupadd {group}) or fix the name"
    )


def _levels(path: str) -> list[str]:
    """``/a/b`` -> ``["/", "/a", "/a/b"]``."""
    path = os.path.normpath(os.path.abspath(path))
    levels = ["/"]
    for part in path.split("/"):
        if part:
            levels.append(os.path.join(levels[-1], part))
    return levels


class _Walk:
    """One walk down a socket path, for the bridge (creating) or a client (checking)."""

    def __init__(self, *, bridge: bool, gid: int | None) -> None:
        self.bridge = bridge
        self.gid = gid
        self.euid = os.geteuid()
        self.hops = 0
        self.mode = GROUP_DIR_MODE if gid is not None else PRIVATE_DIR_MODE

    def refuse(self, key: str, path: str, problem: str, fix: str) -> UnsafePathError:
        who = "the bridge" if self.bridge else "this client"
        return UnsafePathError(key, path, f"{path} {problem}; {who} refuses it. Fix: {fix}")

    def walk(self, path: str, roles: dict[str, Role]) -> os.stat_result | None:
        """Check (and for the bridge create) every level; the last level's stat."""
        self.hops = 0
        return self._walk(path, roles)

    def _walk(self, path: str, roles: dict[str, Role]) -> os.stat_result | None:
        result: os.stat_result | None = None
        for level in _levels(path):
            role = roles.get(level, "ancestor")
            try:
                st = os.lstat(level)
            except FileNotFoundError:
                if not self.bridge:
                    return None  # the bridge makes it, and refuses it if someone beats it
                st = self.create(level)
            except OSError as exc:
                raise self.refuse(
                    "dir",
                    level,
                    f"cannot be checked ({exc.strerror})",
                    _NOT_A_MEMBER,
                ) from None
            if stat.S_ISLNK(st.st_mode) and role == "ancestor":
                self.follow(level, st)
                st = os.stat(level)
            self.check(level, st, role)
            result = st
        return result

    def follow(self, level: str, st: os.stat_result) -> None:
        """An ancestor link is fine if root or we made it and its target passes."""
        if st.st_uid not in (0, self.euid):
            raise self.refuse(
                "dir",
                level,
                f"is a symbolic link owned by {_user(st.st_uid)}",
                f"remove it or {_WHERE}",
            )
        self.hops += 1
        if self.hops > MAX_SYMLINK_HOPS:
            raise self.refuse(
                "dir",
                level,
                f"is one symbolic link too many (at most {MAX_SYMLINK_HOPS}: a loop?)",
                _WHERE,
            )
        self._walk(os.path.realpath(level), {})

    def create(self, level: str) -> os.stat_result:
        with contextlib.suppress(FileExistsError):
            try:
                os.mkdir(level, PRIVATE_DIR_MODE)
            except OSError as exc:
                raise self.refuse(
                    "dir", level, f"cannot be created ({exc.strerror})", _WHERE
                ) from None
        st = os.lstat(level)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == self.euid:
            self.fix(level, st, self.mode)
            st = os.lstat(level)
        return st

    def check(self, level: str, st: os.stat_result, role: Role) -> None:
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            raise self.refuse(
                "dir",
                level,
                "is a symbolic link",
                f"remove it (rm {level}) so the bridge creates a real folder, or {_WHERE}",
            )
        if not stat.S_ISDIR(st.st_mode):
            raise self.refuse("dir", level, "is not a folder", f"remove it or {_WHERE}")
        owners = (self.euid,) if role == "namespace" and self.bridge else (0, self.euid)
        if st.st_uid not in owners:
            allowed = " or ".join(_user(uid) for uid in sorted(set(owners)))
            raise self.refuse(
                "dir",
                level,
                f"is owned by {_user(st.st_uid)}, not by {allowed}: another user may have "
                "created it to read or forge events",
                f"remove it (rm -r {level}) and restart the bridge, or {_WHERE}",
            )
        sticky_system = st.st_uid == 0 and mode & stat.S_ISVTX and role != "namespace"
        if mode & 0o002 and not sticky_system:
            raise self.refuse(
                "dir",
                level,
                f"is writable by every user (mode {mode:04o})",
                f"chmod o-w {level}, or {_WHERE}",
            )
        if mode & 0o020 and not sticky_system:
            ours = role != "ancestor" and (not self.bridge or st.st_gid == self.gid)
            if not ours:
                raise self.refuse(
                    "dir",
                    level,
                    f"is writable by group {_group(st.st_gid)} (mode {mode:04o})",
                    f"chmod g-w {level}, or {_WHERE}"
                    + ("" if role == "ancestor" else ", or set group to that group"),
                )

    def fix(self, level: str, st: os.stat_result, mode: int) -> None:
        """Set mode and group through a descriptor of the very folder we checked."""
        try:
            fd = os.open(level, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self.refuse("dir", level, f"cannot be opened ({exc.strerror})", _WHERE) from None
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or now.st_uid != self.euid:
                raise self.refuse("dir", level, "changed while it was checked", _WHERE)
            if self.gid is not None and now.st_gid != self.gid:
                os.fchown(fd, -1, self.gid)
            if stat.S_IMODE(now.st_mode) != mode:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def let_group_in(self, level: str, st: os.stat_result) -> None:
        """With ``group``, members must be able to enter the socket folder."""
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o001 or (mode & 0o010 and st.st_gid == self.gid):
            return
        if st.st_uid != self.euid:
            raise self.refuse(
                "group",
                level,
                f"does not let group {_group(self.gid or 0)} in (mode {mode:04o})",
                f"chgrp {self.gid} {level} && chmod g+x {level}, or {_WHERE}",
            )
        self.fix(level, st, (mode | 0o050) & ~0o022)


def prepare_bridge_dir(directory: str, namespace_dir: str, group: str | None = None) -> int | None:
    """Create or check every level down to ``namespace_dir``; the group's gid, if any.

    ``directory`` is the configured socket folder and ``namespace_dir`` the
    folder inside it that holds the sockets. Raises :class:`UnsafePathError`
    (or :class:`ConfigError` for an unknown group) before anything is bound.
    """
    gid = group_id(group) if group else None
    walk = _Walk(bridge=True, gid=gid)
    directory = os.path.normpath(os.path.abspath(directory))
    namespace_dir = os.path.normpath(os.path.abspath(namespace_dir))
    top = walk.walk(directory, {directory: "dir"})
    assert top is not None  # the bridge creates what is missing
    if gid is not None:
        walk.let_group_in(directory, top)
    st = walk.walk(namespace_dir, {directory: "dir", namespace_dir: "namespace"})
    assert st is not None
    walk.fix(namespace_dir, st, walk.mode)
    return gid


def prepare_dir(directory: str) -> None:
    """Create or check ``directory`` as the bridge does its socket folder (for the log)."""
    directory = os.path.normpath(os.path.abspath(directory))
    _Walk(bridge=True, gid=None).walk(directory, {directory: "dir"})


def check_client_dir(namespace_dir: str) -> None:
    """Refuse a socket path with a level owned by someone but us or root.

    Levels that do not exist yet are accepted: the bridge creates them (and
    refuses them if someone else did first). Called once per connect.
    """
    namespace_dir = os.path.normpath(os.path.abspath(namespace_dir))
    directory = os.path.dirname(namespace_dir)
    _Walk(bridge=False, gid=None).walk(
        namespace_dir, {directory: "dir", namespace_dir: "namespace"}
    )


def open_private_file(path: str, flags: int, *, key: str, mode: int = 0o600) -> int:
    """Open ``path`` without following a link; refuse anything but our own plain file.

    ``flags`` are the usual ``os.O_*`` access flags; ``O_NOFOLLOW``,
    ``O_CLOEXEC`` and ``O_NONBLOCK`` (a planted FIFO must not hang us) are
    added. Returns the descriptor; raises :class:`UnsafePathError`.
    """
    walk = _Walk(bridge=True, gid=None)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise walk.refuse(
                key, path, "is a symbolic link", f"remove it (rm {path}); it is never followed"
            ) from None
        raise walk.refuse(key, path, f"cannot be opened ({exc.strerror})", _WHERE) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise walk.refuse(key, path, "is not a regular file", f"remove it (rm {path})")
        if st.st_uid != walk.euid:
            raise walk.refuse(
                key, path, f"is owned by {_user(st.st_uid)}", f"remove it (rm {path})"
            )
        if st.st_nlink != 1:
            raise walk.refuse(key, path, f"has {st.st_nlink} hard links", f"remove it (rm {path})")
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd
