"""The one Redis URL parser: what it accepts, what it refuses, round trips, masking."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circus_events._exceptions import ConfigError
from circus_events._redis_url import (
    MAX_REDIS_DB,
    MAX_URL_BYTES,
    MAX_URL_FILE_BYTES,
    RedisAddress,
    check_tls_files,
    parse_redis_url,
    read_redis_url_file,
    refuse_visible_password,
)
from circus_events.bridge.presence import redis_py_client

SECRET = "s3cr3t+/@:%x"
QUOTED = "s3cr3t%2B%2F%40%3A%25x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", dict(host="localhost", port=6379, db=0, password=None, tls=False)),
        ("redis://LocalHost:7000/", dict(host="localhost", port=7000, db=0)),
        ("redis://:p%40ss@h:7/4", dict(host="h", port=7, db=4, username=None, password="p@ss")),
        ("redis://u:p@h/1", dict(username="u", password="p", db=1)),
        ("redis://u@h?db=2", dict(username="u", password=None, db=2)),
        ("redis://h?password=a+b&username=me", dict(username="me", password="a+b")),
        ("redis://:@h", dict(username=None, password=None)),
        ("redis://10.0.0.5:6380/15", dict(host="10.0.0.5", port=6380, db=15)),
        ("redis://[::1]:6380", dict(host="::1", port=6380)),
        ("redis://redis_1.internal", dict(host="redis_1.internal")),
        (f"redis://h/{MAX_REDIS_DB}", dict(db=MAX_REDIS_DB)),
        ("REDIS://h", dict(scheme="redis")),
        ("rediss://h:6380/0", dict(tls=True, ssl_cert_reqs="required", verifies_hostname=True)),
        ("rediss://h?ssl_cert_reqs=none", dict(tls=True, verifies_hostname=False)),
        (
            "rediss://h?ssl_cert_reqs=OPTIONAL&ssl_check_hostname=no",
            dict(ssl_cert_reqs="optional", ssl_check_hostname=False),
        ),
        ("rediss://h?ssl_ca_certs=/etc/ca%20x.pem", dict(ssl_ca_certs="/etc/ca x.pem")),
        ("unix:///run/redis.sock?db=5", dict(path="/run/redis.sock", db=5, host=None)),
        ("unix://:pw@/run/redis.sock", dict(path="/run/redis.sock", password="pw")),
        ("unix://u:pw@/run/redis.sock?db=0", dict(username="u", password="pw")),
    ],
)  # fmt: skip
def test_accepted(url: str, expected: dict[str, Any]) -> None:
    address = parse_redis_url(url)
    for key, value in expected.items():
        assert getattr(address, key) == value, key
    assert parse_redis_url(address.url()) == address, "the canonical URL reads back the same"
    assert parse_redis_url(address.url()).url() == address.url()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "scheme 'http' is not redis://"),
        ("redis+sentinel://h:26379/mymaster", "not supported yet"),
        ("rediss+cluster://h:7000", "not supported yet"),
        ("localhost:6379", "is not a URL"),
        ("127.0.0.1", "is not a URL"),
        ("", "empty"),
        ("redis://", "names no host"),
        ("redis://:pw@", "names no host"),
        ("redis://bad host", "spaces"),
        ("redis://h\x01", "control characters"),
        ("redis://ho!st", "not a host name"),
        ("redis://-h", "not a host name"),
        ("redis://[nope]:1", "IPv4 or IPv6 address"),
        ("redis://[::1", "cannot be read as a URL"),
        ("redis://h:99999", "port is not a number from 1 to 65535"),
        ("redis://h:0", "port is not a number from 1 to 65535"),
        ("redis://h:abc", "port is not a number"),
        ("redis://h/x", "database 'x' is not a number"),
        ("redis://h/-1", "database '-1' is not a number"),
        (f"redis://h/{MAX_REDIS_DB + 1}", "is not a number from 0 to"),
        ("redis://h/99999999999999999999", "is not a number from 0 to"),
        ("redis://h/1/2", "just the database number"),
        ("redis://h/1?db=1", "both in the path and as ?db="),
        ("redis://h?db=", "has no value"),
        ("redis://h?db", "has no value"),
        ("redis://h?db=1&db=2", "given twice"),
        ("redis://h?foo=1", "unknown query parameter 'foo'"),
        ("redis://h?socket_timeout=1", "unknown query parameter 'socket_timeout'"),
        ("redis://:a@h?password=b", "password is given both"),
        ("redis://u@h?username=v", "username is given both"),
        ("redis://h#frag", "'#' part"),
        ("redis://h?ssl_cert_reqs=none", "apply only to rediss://"),
        ("unix:///r.sock?ssl_ca_certs=/x", "apply only to rediss://"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe'"),
        ("rediss://h?ssl_check_hostname=perhaps", "ssl_check_hostname='perhaps'"),
        ("unix://", "needs a socket path"),
        ("unix:///", "needs a socket path"),
        ("unix://:pw@", "needs a socket path"),
        ("unix://run/redis.sock", "three slashes"),
        ("unix://:6379/run/redis.sock", "takes no port"),
        ("unix://:x/run/redis.sock", "takes no port"),
        ("unix://" + "/x" * 60, "longer than the system limit"),
        ("unix:///a%00b", "NUL"),
        ("redis://h/" + "0" * MAX_URL_BYTES, f"longer than {MAX_URL_BYTES} bytes"),
    ],
)
def test_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url(url, key="--redis-url")
    assert info.value.key == "--redis-url"
    assert message in str(info.value), str(info.value)


def test_surrounding_blanks_and_a_colon_in_a_unix_path() -> None:
    assert parse_redis_url("  redis://h\n").host == "h"
    # Not a port: the whole path is the socket's name.
    assert parse_redis_url("unix:///r.sock:6379").path == "/r.sock:6379"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{QUOTED}@h:1/2",
        f"redis://:{QUOTED}@h",
        f"redis://h?password={QUOTED}",
        f"redis://u@h?password={QUOTED}&db=3",
        f"rediss://:{QUOTED}@h?ssl_cert_reqs=none",
        f"unix://:{QUOTED}@/run/redis.sock",
        f"unix:///run/redis.sock?password={QUOTED}",
    ],
)
def test_the_password_is_masked_everywhere(url: str) -> None:
    address = parse_redis_url(url)
    assert address.password == SECRET
    for shown in (address.display, repr(address), str(address)):
        assert "s3cr3t" not in shown, shown
    assert ":***@" in address.display
    assert "s3cr3t" in address.url(), "url() is the one form that keeps it"
    with pytest.raises(ConfigError) as info:
        refuse_visible_password("redis_url", url, file_option="redis_url_file")
    assert str(info.value).startswith("redis_url: contains a password")
    assert "redis_url_file" in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{QUOTED}@h:99999",
        f"redis://:{QUOTED}@h?foo=1",
        f"redis://:{QUOTED}@h/x",
        f"redis://h?password={QUOTED}&password=2",
        f"redis://:{QUOTED}@h?password=2",
        f"http://:{QUOTED}@h",
        f"unix://:{QUOTED}@",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url(url)
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in repr(info.value)


def test_no_password_no_refusal() -> None:
    refuse_visible_password("--redis-url", "redis://u@h/0", file_option="--redis-url-file")


_names = st.from_regex(r"[a-z0-9]([a-z0-9_.-]{0,20}[a-z0-9])?", fullmatch=True)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_paths = st.from_regex(r"/[A-Za-z0-9_. %:+-]{1,40}", fullmatch=True)


@st.composite
def addresses(draw: st.DrawFn) -> RedisAddress:
    scheme = draw(st.sampled_from(["redis", "rediss", "unix"]))
    password = draw(st.none() | _text.filter(bool))
    username = draw(st.none() | _text.filter(bool))
    common: dict[str, Any] = dict(
        scheme=scheme,
        db=draw(st.integers(0, MAX_REDIS_DB)),
        username=username,
        password=password,
    )
    if scheme == "unix":
        return RedisAddress(path=draw(_paths), **common)
    host = draw(_names | st.sampled_from(["::1", "fe80::1", "10.1.2.3"]))
    tls: dict[str, Any] = {}
    if scheme == "rediss":
        tls = dict(
            ssl_cert_reqs=draw(st.sampled_from(["none", "optional", "required"])),
            ssl_check_hostname=draw(st.booleans()),
            ssl_ca_certs=draw(st.none() | _paths),
            ssl_ca_path=draw(st.none() | _paths),
            ssl_certfile=draw(st.none() | _paths),
            ssl_keyfile=draw(st.none() | _paths),
        )
    return RedisAddress(host=host, port=draw(st.integers(1, 65535)), **common, **tls)


@given(addresses())
def test_round_trip(address: RedisAddress) -> None:
    assert parse_redis_url(address.url()) == address
    masked = dataclasses.replace(address, password="***" if address.password else None)
    assert parse_redis_url(address.display) == masked, "display is the URL, password masked"


def test_redis_py_reads_the_address_the_same_way(tmp_path: Path) -> None:
    """status --all builds its redis-py client from the parsed address."""
    tcp = redis_py_client(
        parse_redis_url(f"rediss://me@h:7000/3?password={QUOTED}&ssl_cert_reqs=none"), 1.0
    )
    kwargs = tcp.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 7000, 3)
    assert (kwargs["username"], kwargs["password"]) == ("me", SECRET)
    assert kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_check_hostname"] is False
    unix = redis_py_client(parse_redis_url("unix://:pw@/run/r.sock?db=2"), 1.0)
    kwargs = unix.connection_pool.connection_kwargs
    assert (kwargs["path"], kwargs["db"], kwargs["password"]) == ("/run/r.sock", 2, "pw")
    plain = redis_py_client(parse_redis_url("redis://h"), 1.0)
    assert "ssl_cert_reqs" not in plain.connection_pool.connection_kwargs
    for client in (tcp, unix, plain):
        client.close()  # type: ignore[no-untyped-call]


# -- TLS files, checked before the bridge starts --------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_files_that_work(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    url = f"rediss://h?ssl_ca_certs={cert}&ssl_certfile={cert}&ssl_keyfile={key}"
    check_tls_files(parse_redis_url(url))
    check_tls_files(parse_redis_url(f"rediss://h?ssl_ca_path={cert.parent}"))
    check_tls_files(parse_redis_url("rediss://h"))
    check_tls_files(parse_redis_url("redis://h"))


def test_tls_files_that_do_not(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = {
        f"rediss://h?ssl_ca_certs={tmp_path}/missing.pem": "ssl_ca_certs: cannot use",
        f"rediss://h?ssl_ca_certs={tmp_path}": "is not a file",
        f"rediss://h?ssl_ca_path={cert}": "ssl_ca_path",
        f"rediss://h?ssl_ca_certs={garbage}": f"ssl_ca_certs: '{garbage}' holds no PEM certificate",
        f"rediss://h?ssl_certfile={garbage}": f"ssl_certfile: '{garbage}' is not a PEM certificate",
        f"rediss://h?ssl_certfile={cert}": f"ssl_certfile: '{cert}' holds no PEM private key",
        f"rediss://h?ssl_certfile={cert}&ssl_keyfile={garbage}": (
            f"ssl_keyfile: '{garbage}' is not the PEM private key of '{cert}'"
        ),
        f"rediss://h?ssl_certfile={key}&ssl_keyfile={key}": f"'{key}' is not a PEM certificate",
        f"rediss://h?ssl_certfile={cert}&ssl_keyfile={tmp_path}/nokey.pem": "ssl_keyfile",
        f"rediss://h?ssl_keyfile={key}": "ssl_keyfile needs ssl_certfile",
    }
    for url, message in cases.items():
        with pytest.raises(ConfigError) as info:
            check_tls_files(parse_redis_url(url), key="CIRCUS_EVENTS_REDIS_URL")
        assert info.value.key == "CIRCUS_EVENTS_REDIS_URL"
        assert message in str(info.value), (url, str(info.value))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_tls_file(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(certificate[0].read_bytes())
    private.chmod(0)
    with pytest.raises(ConfigError, match="not readable"):
        check_tls_files(parse_redis_url(f"rediss://h?ssl_ca_certs={private}"))


# -- the URL file (--redis-url-file, redis_url_file) -----------------------------------------


def test_url_file(tmp_path: Path) -> None:
    path = tmp_path / "url"
    path.write_text(f"# the bus\n\n  redis://:{QUOTED}@h:1/2  \n")
    assert read_redis_url_file("--redis-url-file", str(path)) == f"redis://:{QUOTED}@h:1/2"
    cases = {
        "": "exactly one URL line, found 0",
        "# nothing\n": "exactly one URL line, found 0",
        "redis://a\nredis://b\n": "found 2",
        "x" * (MAX_URL_FILE_BYTES + 1): "larger than",
    }
    for content, message in cases.items():
        path.write_text(content)
        with pytest.raises(ConfigError, match=message):
            read_redis_url_file("--redis-url-file", str(path))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_redis_url_file("--redis-url-file", str(path))
    with pytest.raises(ConfigError, match=r"--redis-url-file: cannot read .*No such file"):
        read_redis_url_file("--redis-url-file", str(tmp_path / "missing"))


@pytest.mark.timeout(20)
def test_url_file_must_be_a_regular_file(tmp_path: Path) -> None:
    """A FIFO without a writer used to block the reader (the bridge, circusd) forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "url"
    target.write_text("redis://h:1/2\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_redis_url_file("redis_url_file", str(link)) == "redis://h:1/2"  # as before
    cases = {
        str(fifo): "is a FIFO (named pipe), not a regular file",
        str(tmp_path): "is a directory, not a regular file",
        "/dev/null": "is a character device, not a regular file",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(f"redis_url_file: {path!r} {message}")):
            read_redis_url_file("redis_url_file", path)


# -- the bridge's connection and redis-py's, from one address, reach the same user ---------


def test_bridge_and_redis_py_log_in_as_the_same_user(redis_server: Any) -> None:
    import asyncio  # noqa: PLC0415

    from circus_events.bridge.resp import open_connection  # noqa: PLC0415

    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "app", "on", ">pw+1", "~*", "&*", "+@all")
    admin.execute_command("ACL", "SETUSER", "open", "on", "nopass", "~*", "&*", "+@all")
    base = f"127.0.0.1:{redis_server.port}"
    urls = {
        f"redis://app:pw%2B1@{base}/2": b"app",
        f"redis://{base}/2?username=app&password=pw%2B1": b"app",
        f"redis://open@{base}/2": b"open",  # a user without a password: AUTH open ""
        f"redis://{base}/2": b"default",
    }

    async def bridge_side(url: str) -> bytes:
        conn = await open_connection(parse_redis_url(url))
        try:
            whoami: bytes = await conn.request("ACL", "WHOAMI")
            return whoami
        finally:
            await conn.aclose()

    try:
        for url, user in urls.items():
            assert asyncio.run(bridge_side(url)) == user, url
            with redis_py_client(parse_redis_url(url), 2.0) as client:
                assert client.execute_command("ACL", "WHOAMI") in (user, user.decode()), url
                assert client.connection_pool.connection_kwargs["db"] == 2
    finally:
        admin.execute_command("ACL", "DELUSER", "app", "open")
        admin.close()
