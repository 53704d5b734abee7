"""One reader of Redis URLs for the whole project: the bridge, ``status --all``, the plugin.

Theory of operation
-------------------
Three parsers used to read the same URL three ways (``?password=`` was used
by ``status --all`` and ignored by the bridge). Now :func:`parse_redis_url`
turns a URL into a frozen :class:`RedisAddress` once, at option-parse time;
the bridge's own RESP client connects from it, and ``status --all`` builds
its redis-py client from the same fields with explicit keyword arguments.

Accepted forms (Sentinel and Cluster URLs are refused as "not supported yet")::

    redis://[[user][:password]@]host[:port][/db][?param=value&...]
    rediss://...                          the same over TLS
    unix://[[user][:password]@]/path/to/redis.sock[?param=value&...]

Query parameters: ``db``, ``username``, ``password`` (either here or in the
user-info part, not both), and for ``rediss://`` only ``ssl_cert_reqs``
(``none``/``optional``/``required``), ``ssl_check_hostname``,
``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``. Any
other parameter is refused, naming it: a parameter one reader honours and
another ignores is how the readers came to disagree. Values are
percent-decoded (``+`` stays a plus, as redis-py reads it).

No error message and no ``repr`` shows the password: :attr:`RedisAddress.display`
masks it (from the user-info part or ``?password=`` alike) and is what logs,
status and errors print. Nothing here touches the network; only
:func:`check_tls_files` and :func:`read_redis_url_file` touch the file system.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
import stat
from typing import Final, Literal
from urllib.parse import quote, unquote, urlsplit

from ._exceptions import ConfigError

__all__ = [
    "DEFAULT_REDIS_PORT",
    "MAX_REDIS_DB",
    "MAX_URL_BYTES",
    "QUERY_PARAMETERS",
    "RedisAddress",
    "check_tls_files",
    "parse_redis_url",
    "read_redis_url_file",
    "refuse_visible_password",
]

DEFAULT_REDIS_PORT: Final = 6379
#: Redis numbers its databases with a C int (``databases`` in redis.conf).
MAX_REDIS_DB: Final = 2**31 - 1
#: A Redis URL, TLS file paths included, fits easily; longer is a mistake (or a file's contents).
MAX_URL_BYTES: Final = 4096
#: AF_UNIX paths are limited to 107 bytes on Linux (as ``_config.MAX_IPC_PATH``).
MAX_UNIX_PATH: Final = 107
#: Host names are at most 253 characters (RFC 1035).
MAX_HOST_CHARS: Final = 253

CertReqs = Literal["none", "optional", "required"]
_CERT_REQS: Final[dict[str, ssl.VerifyMode]] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_TLS_FILES: Final = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
_TLS_PARAMETERS: Final = ("ssl_cert_reqs", "ssl_check_hostname", *_TLS_FILES)
#: Every query parameter a URL may carry, in the order :meth:`RedisAddress.url` writes them.
QUERY_PARAMETERS: Final = ("db", "username", "password", *_TLS_PARAMETERS)
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_SCHEMES: Final = ("redis", "rediss", "unix")
_NOT_YET: Final = ("redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?", re.ASCII)
_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)


@dataclasses.dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to connect to Redis, parsed once from a URL by :func:`parse_redis_url`.

    ``host`` and ``port`` for ``redis://``/``rediss://``; ``path`` for
    ``unix://``. The password never appears in ``repr`` or :attr:`display`.
    """

    scheme: Literal["redis", "rediss", "unix"]
    host: str | None = None
    port: int = DEFAULT_REDIS_PORT
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    #: TLS (``rediss://`` only): certificate checking and the files it uses.
    ssl_cert_reqs: CertReqs = "required"
    ssl_check_hostname: bool = True
    ssl_ca_certs: str | None = None
    ssl_ca_path: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def verifies_hostname(self) -> bool:
        """Whether TLS checks the server's name (never without checking its certificate)."""
        return self.tls and self.ssl_check_hostname and self.ssl_cert_reqs != "none"

    @property
    def tls_files(self) -> dict[str, str]:
        """The TLS files this address names, by query parameter."""
        return {
            name: value
            for name in _TLS_FILES
            if (value := getattr(self, name)) is not None and isinstance(value, str)
        }

    @property
    def display(self) -> str:
        """The URL with the password masked: what logs, status and errors show."""
        return self._unparse(mask=True)

    def url(self) -> str:
        """The canonical URL, password included: ``parse_redis_url(a.url()) == a``."""
        return self._unparse(mask=False)

    def _unparse(self, *, mask: bool) -> str:
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + ("***" if mask else quote(self.password, safe=""))
            userinfo += "@"
        query = []
        if self.tls:
            if self.ssl_cert_reqs != "required":
                query.append(f"ssl_cert_reqs={self.ssl_cert_reqs}")
            if not self.ssl_check_hostname:
                query.append("ssl_check_hostname=false")
            query += [f"{name}={quote(path, safe='/')}" for name, path in self.tls_files.items()]
        if self.scheme == "unix":
            assert self.path is not None
            query.insert(0, f"db={self.db}")
            location = quote(self.path, safe="/")
        else:
            assert self.host is not None
            host = f"[{self.host}]" if ":" in self.host else self.host
            location = f"{host}:{self.port}/{self.db}"
        tail = "?" + "&".join(query) if query else ""
        return f"{self.scheme}://{userinfo}{location}{tail}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``rediss://`` (None otherwise); may raise ``ssl.SSLError``."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca_certs, capath=self.ssl_ca_path)
        context.check_hostname = self.verifies_hostname
        context.verify_mode = _CERT_REQS[self.ssl_cert_reqs]
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context


def parse_redis_url(url: str, *, key: str = "redis_url") -> RedisAddress:
    """Parse a ``redis://``, ``rediss://`` or ``unix://`` URL (see the module docstring).

    Raises :class:`ConfigError` naming ``key`` and the part that is wrong;
    the message never contains the password.
    """
    text = url.strip()
    if len(text.encode("utf-8", "replace")) > MAX_URL_BYTES:
        raise ConfigError(key, f"the URL is longer than {MAX_URL_BYTES} bytes")
    if not text:
        raise ConfigError(key, "the URL is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigError(key, "the URL contains spaces or control characters")
    if "://" not in text:
        raise ConfigError(key, "is not a URL: write redis://host:port/db or unix:///path")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unbalanced '[' in the host
        raise ConfigError(key, f"cannot be read as a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme in _NOT_YET:
        raise ConfigError(
            key,
            f"{scheme}:// (Redis Sentinel/Cluster) is not supported yet; "
            "use redis://, rediss:// or unix://",
        )
    if scheme not in _SCHEMES:
        raise ConfigError(key, f"scheme {parts.scheme!r} is not redis://, rediss:// or unix://")
    if parts.fragment:
        raise ConfigError(key, "the URL has a '#' part; percent-encode '#' in a password as %23")
    query = _parse_query(key, parts.query)
    username, password = _credentials(key, parts.username, parts.password, query)
    db_text = query.pop("db", None)
    if scheme == "unix":
        host, port, path = None, DEFAULT_REDIS_PORT, _unix_path(key, parts.hostname, parts.path)
        try:
            given_port = parts.port
        except ValueError:
            given_port = -1
        if given_port is not None:
            raise ConfigError(key, "a unix:// URL takes no port")
    else:
        host, port, path = _host(key, parts.netloc, parts.hostname), _port(key, parts), None
        db_path = parts.path[1:] if parts.path not in ("", "/") else None
        if db_path is not None and "/" in db_path:
            raise ConfigError(key, "the path must be just the database number: /0")
        if db_path is not None:
            if db_text is not None:
                raise ConfigError(key, "the database is given both in the path and as ?db=")
            db_text = db_path
    tls = {name: query.pop(name) for name in _TLS_PARAMETERS if name in query}
    if tls and scheme != "rediss":
        names = ", ".join(sorted(tls))
        raise ConfigError(key, f"{names} apply only to rediss:// (TLS) URLs")
    reqs = tls.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ConfigError(key, f"ssl_cert_reqs={reqs!r} is not none, optional or required")
    check = tls.get("ssl_check_hostname", "true").lower()
    if check not in _TRUE | _FALSE:
        raise ConfigError(key, f"ssl_check_hostname={check!r} is not true or false")
    assert not query, query  # every parameter was known (checked in _parse_query)
    return RedisAddress(
        scheme=scheme,  # type: ignore[arg-type]  # one of _SCHEMES
        host=host,
        port=port,
        path=path,
        db=_db(key, db_text),
        username=username,
        password=password,
        ssl_cert_reqs=reqs,  # type: ignore[arg-type]  # one of _CERT_REQS
        ssl_check_hostname=check in _TRUE,
        ssl_ca_certs=tls.get("ssl_ca_certs"),
        ssl_ca_path=tls.get("ssl_ca_path"),
        ssl_certfile=tls.get("ssl_certfile"),
        ssl_keyfile=tls.get("ssl_keyfile"),
    )


def _parse_query(key: str, query: str) -> dict[str, str]:
    """``a=1&b=2`` into a dict; unknown, repeated or empty parameters are refused."""
    values: dict[str, str] = {}
    for item in query.split("&") if query else ():
        name, equals, raw = item.partition("=")
        name = unquote(name)
        if name not in QUERY_PARAMETERS:
            known = ", ".join(QUERY_PARAMETERS)
            raise ConfigError(key, f"unknown query parameter {name!r} (known: {known})")
        if name in values:
            raise ConfigError(key, f"query parameter {name!r} is given twice")
        if not equals or not raw:
            raise ConfigError(key, f"query parameter {name!r} has no value")
        values[name] = unquote(raw)
    return values


def _credentials(
    key: str, user: str | None, secret: str | None, query: dict[str, str]
) -> tuple[str | None, str | None]:
    username = unquote(user) if user else None
    password = unquote(secret) if secret else None
    for name, from_query in (("username", query.pop("username", None)),
                             ("password", query.pop("password", None))):  # fmt: skip
        if from_query is None:
            continue
        if (username if name == "username" else password) is not None:
            raise ConfigError(key, f"the {name} is given both before '@' and as ?{name}=")
        if name == "username":
            username = from_query
        else:
            password = from_query
    return username, password


def _host(key: str, netloc: str, hostname: str | None) -> str:
    if not hostname:
        raise ConfigError(key, "the URL names no host (redis://host:6379/0)")
    if "[" in netloc.rpartition("@")[2]:
        try:
            ipaddress.IPv6Address(hostname.partition("%")[0])
        except ValueError:
            raise ConfigError(key, f"host [{hostname}] is not an IPv6 address") from None
        return hostname
    if len(hostname) > MAX_HOST_CHARS or not _HOST_NAME.fullmatch(hostname):
        raise ConfigError(key, f"host {hostname!r} is not a host name or an IP address")
    return hostname


def _port(key: str, parts: object) -> int:
    try:
        port = parts.port  # type: ignore[attr-defined]
    except ValueError:
        port = -1
    if port is None:
        return DEFAULT_REDIS_PORT
    if not 1 <= port <= 65535:
        raise ConfigError(key, "the port is not a number from 1 to 65535")
    return int(port)


def _unix_path(key: str, hostname: str | None, raw_path: str) -> str:
    if hostname:
        raise ConfigError(
            key,
            f"unix:// takes an absolute path after three slashes (unix:///{hostname}/...), "
            f"not a host ({hostname!r})",
        )
    path = unquote(raw_path)
    if not path or path == "/":
        raise ConfigError(key, "a unix:// URL needs a socket path (unix:///run/redis.sock)")
    if "\0" in path:
        raise ConfigError(key, "the socket path contains a NUL byte")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise ConfigError(
            key, f"the socket path is longer than the system limit of {MAX_UNIX_PATH} bytes"
        )
    return path


def _db(key: str, text: str | None) -> int:
    if text is None:
        return 0
    if not _DIGITS.fullmatch(text) or len(text) > 10:
        raise ConfigError(key, f"database {text!r} is not a number from 0 to {MAX_REDIS_DB}")
    db = int(text)
    if db > MAX_REDIS_DB:
        raise ConfigError(key, f"database {db} is not a number from 0 to {MAX_REDIS_DB}")
    return db


def check_tls_files(address: RedisAddress, *, key: str = "redis_url") -> None:
    """Refuse TLS files that are missing, unreadable or unusable, before anything starts."""
    for name, path in address.tls_files.items():
        want_dir = name == "ssl_ca_path"
        try:
            info = os.stat(path)
        except OSError as exc:
            raise ConfigError(key, f"{name}: cannot use {path!r}: {exc.strerror}") from None
        if want_dir != stat.S_ISDIR(info.st_mode):
            kind = "a directory" if want_dir else "a file"
            raise ConfigError(key, f"{name}: {path!r} is not {kind}")
        if not os.access(path, os.R_OK | (os.X_OK if want_dir else 0)):
            raise ConfigError(key, f"{name}: {path!r} is not readable by this user")
    if address.ssl_keyfile and not address.ssl_certfile:
        raise ConfigError(key, "ssl_keyfile needs ssl_certfile (the client certificate)")
    try:
        address.ssl_context()  # reads the files: a bad PEM is found now, not at connect time
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(key, _tls_problem(address, exc)) from None


def _tls_problem(address: RedisAddress, error: Exception) -> str:
    """Which TLS file is wrong: OpenSSL's ``[SSL] PEM lib`` names none."""
    ca, cert, keyfile = address.ssl_ca_certs, address.ssl_certfile, address.ssl_keyfile
    try:
        ssl.create_default_context(cafile=ca, capath=address.ssl_ca_path)
    except (ssl.SSLError, OSError, ValueError):
        if ca is not None:
            return f"ssl_ca_certs: {ca!r} holds no PEM certificate"
    else:
        if cert is not None:
            try:  # a certificate is read without its key this way
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
            except (ssl.SSLError, OSError, ValueError):
                return f"ssl_certfile: {cert!r} is not a PEM certificate"
            if keyfile is not None:
                return f"ssl_keyfile: {keyfile!r} is not the PEM private key of {cert!r}"
            return f"ssl_certfile: {cert!r} holds no PEM private key for its certificate"
    files = ", ".join(address.tls_files) or "the system CA store"
    return f"the TLS files ({files}) cannot be used: {error}"


def refuse_visible_password(key: str, url: str, *, file_option: str) -> None:
    """Refuse a URL with a password where every user can read it (``ps``).

    The plugin (``redis_url``) and ``circus-events bridge --redis-url`` both
    call this, so both refuse alike and say the same thing.
    """
    if parse_redis_url(url, key=key).password is not None:
        raise ConfigError(
            key,
            "contains a password, and this value is visible to every user in `ps`; put the URL "
            f"in CIRCUS_EVENTS_REDIS_URL (the environment) or in a file named by {file_option}",
        )


_FILE_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _regular_file(key: str, path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
        raise ConfigError(key, f"{path!r} is {kind}, not a regular file holding the URL")


#: A URL file larger than this is not a URL file.
MAX_URL_FILE_BYTES: Final = 64 * 1024


def read_redis_url_file(key: str, path: str) -> str:
    """The URL stored in ``path`` (one line; blank lines and ``#`` comments ignored).

    Only a regular file (or a link to one) is read: a FIFO without a writer
    would block the bridge or circusd forever, a device could be endless.
    """
    try:
        _regular_file(key, path, os.stat(path).st_mode)  # before opening: a device may react
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            _regular_file(key, path, os.fstat(fd).st_mode)  # what was opened, not what was seen
            with open(fd, "rb", closefd=False) as handle:
                data = handle.read(MAX_URL_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path!r}: {exc.strerror}") from None
    if len(data) > MAX_URL_FILE_BYTES:
        raise ConfigError(key, f"{path!r} is larger than {MAX_URL_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path!r} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    urls = [line for line in lines if line and not line.startswith("#")]
    if len(urls) != 1:
        raise ConfigError(key, f"{path!r} must hold exactly one URL line, found {len(urls)}")
    return urls[0]
