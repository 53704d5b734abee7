"""A small RESP2 client on asyncio: the bridge's two Redis connections.

Theory of operation
-------------------
The bridge's Redis hot loops (the ``PUBLISH``/``XADD`` pipeline and the
subscriber's and ``XREAD`` reader's loops) run on this client, not on
redis-py, because redis-py's asyncio client is several times slower doing
the same work with the same batching. Measured with
``python benchmarks/redis_client.py --rounds 5`` (200,000 messages of 100
bytes, 2,000 frames per loop turn, two processes against one local
redis-server, medians of 5 interleaved runs, 2 shared cores) on 2026-12-02:

============  ===========  ============  ================
mode          this client  redis.asyncio redis-py / this
============  ===========  ============  ================
pub/sub       423,772/s    53,024/s      0.13x
stream        228,072/s    50,775/s      0.22x
============  ===========  ============  ================

(An earlier run that day, on a quieter machine: 901,131/s against 66,669/s,
0.07x; 377,543/s against 83,141/s, 0.22x.) The rule was: within 0.8x,
switch to redis-py and delete this module; it is far from that, so this
client stays for the hot loops only; ``status --all`` reads presence
records with redis-py (:func:`.presence.redis_py_client`). The bridge
speaks RESP2 itself, on an :class:`asyncio.Protocol`:

* :func:`open_connection` connects (TCP, TLS or a Unix socket) to a
  :class:`~circus_events._redis_url.RedisAddress` (the project's one URL
  parser, re-exported here with ``parse_redis_url``), then sends
  ``AUTH``, ``SELECT``, ``CLIENT SETNAME`` and ``PING`` in one write and
  checks the replies. Failures become :class:`RedisConnectError` with a
  ``kind`` the caller can show (``unreachable``, ``auth_failed``, ...).
* After that the owner installs a *consumer*: a function that is handed the
  ``hiredis.Reader`` after every read and pulls every complete reply out of
  it. No per-reply callback or future on the hot path.
* Reads are fed to hiredis in slices of :data:`FEED_CHUNK` bytes: hiredis
  moves its unread buffer down after every KiB consumed, which makes a whole
  256 KiB read cost ~10x more to parse than the same bytes in 16 KiB slices.

Nothing here reconnects; the Redis side owns that policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

import hiredis

from .._exceptions import BridgeError
from .._redis_url import RedisAddress, parse_redis_url
from .redis_errors import auth_failure, is_auth_error, not_redis, reply_head

__all__ = [
    "CONNECT_TIMEOUT",
    "FEED_CHUNK",
    "RedisAddress",
    "RedisConnectError",
    "RespConnection",
    "encode_command",
    "open_connection",
    "parse_redis_url",
]

#: Connect plus handshake must finish within this; a paused Redis accepts
#: TCP connections (kernel backlog) but never answers.
CONNECT_TIMEOUT: Final = 3.0
#: Bytes handed to hiredis at a time (see the module docstring).
FEED_CHUNK: Final = 16 * 1024
#: How long close() waits for the transport to finish before aborting it.
CLOSE_TIMEOUT: Final = 1.0


class RedisConnectError(BridgeError):
    """Connecting to Redis failed; ``kind`` says how, for status and logs.

    Kinds: ``unreachable`` (refused, no route, name not found, closed during
    the handshake), ``timeout``, ``tls_failed``, ``auth_failed``, ``not_redis``
    (the server answered, not in RESP: the wrong port), ``loading`` (Redis is
    loading its data set), ``redis_error`` (any other error reply).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def misconfigured(self) -> bool:
        """Whether retrying cannot help until someone fixes the URL or the server."""
        return self.kind in ("auth_failed", "tls_failed", "not_redis")


class NotRedisReply(ConnectionError):
    """The server sent bytes that are not RESP; ``head`` is how they began."""

    def __init__(self, head: str) -> None:
        super().__init__(f"the server's reply is not Redis protocol (it began with {head!r})")
        self.head = head


class _ClosedEarly(ConnectionError):
    """The connection closed with replies still due."""


def encode_command(*args: bytes | str | int) -> bytes:
    """Encode one command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = (
            arg.encode("utf-8")
            if isinstance(arg, str)
            else (b"%d" % arg if isinstance(arg, int) else arg)
        )
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


Consumer = Callable[[Any], None]


class RespConnection(asyncio.Protocol):
    """One RESP2 connection. Replies go to the installed consumer, in order.

    Until :meth:`set_consumer` is called, replies resolve the futures that
    :meth:`request` returned (used for the handshake).
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._consumer: Consumer = self._resolve_waiters
        self._lost: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._failure: BaseException | None = None
        #: Loop time of the last bytes received (liveness checks read it).
        self.last_rx = self._loop.time()
        self.writing_paused = False
        #: Called when the transport's write buffer drains below its low mark.
        self.on_writable: Callable[[], None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        reader = self.reader
        consume = self._consumer
        try:
            size = len(data)
            if size <= FEED_CHUNK:
                reader.feed(data)
                consume(reader)
            else:
                for offset in range(0, size, FEED_CHUNK):
                    reader.feed(data, offset, min(FEED_CHUNK, size - offset))
                    consume(reader)
        except Exception as exc:  # a protocol error or a consumer bug: drop the connection
            self._failure = NotRedisReply(reply_head(data)) if _not_resp(exc) else exc
            if self.transport is not None:
                self.transport.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._failure or exc
        if not self._lost.done():
            self._lost.set_result(reason)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if isinstance(reason, NotRedisReply):
                    waiter.set_exception(NotRedisReply(reason.head))
                else:
                    waiter.set_exception(_ClosedEarly("the Redis connection closed"))

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.on_writable is not None:
            self.on_writable()

    # -- use -----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        transport = self.transport
        return transport is not None and not self._lost.done() and not transport.is_closing()

    def write(self, data: bytes) -> None:
        """Write unless the connection is gone (the owner requeues what was lost)."""
        transport = self.transport
        if transport is not None and not self._lost.done() and not transport.is_closing():
            transport.write(data)

    def request(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (an error reply is a value)."""
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.append(waiter)
        self.write(encode_command(*args))
        return waiter

    def set_consumer(self, consumer: Consumer) -> None:
        """Hand every later reply to ``consumer(reader)`` instead of to futures."""
        self._consumer = consumer

    def _resolve_waiters(self, reader: Any) -> None:
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not self._waiters:
                raise ConnectionError("Redis sent a reply nobody asked for")
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    async def wait_closed(self) -> BaseException | None:
        """Wait until the connection is gone; return why (None for a clean close)."""
        return await asyncio.shield(self._lost)

    def abort(self, reason: str | None = None) -> None:
        """Drop the connection now; ``reason`` becomes what :meth:`wait_closed` returns."""
        if reason is not None and self._failure is None:
            self._failure = ConnectionAbortedError(reason)
        if self.transport is not None:
            self.transport.abort()

    async def aclose(self) -> None:
        """Close, waiting briefly for buffered writes; abort a peer that does not answer."""
        if self.transport is None:
            return
        self.transport.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self.transport.abort()
            await asyncio.shield(self._lost)


def _not_resp(exc: Exception) -> bool:
    return isinstance(exc, hiredis.ProtocolError)


def _classify_reply_error(address: RedisAddress, what: str, error: Exception) -> RedisConnectError:
    text = str(error)
    upper = text.upper()
    where = address.display
    if is_auth_error(text):
        return RedisConnectError("auth_failed", auth_failure(address, text))
    if upper.startswith("LOADING"):
        return RedisConnectError("loading", f"{where} is loading its data set: {text}")
    return RedisConnectError("redis_error", f"{what} failed at {where}: {text}")


async def open_connection(
    address: RedisAddress, *, name: str | None = None, timeout: float = CONNECT_TIMEOUT
) -> RespConnection:
    """Connect and authenticate; raise :class:`RedisConnectError` on any failure."""
    loop = asyncio.get_running_loop()
    conn: RespConnection | None = None
    where = address.display
    try:
        async with asyncio.timeout(timeout):
            if address.path is not None:
                _, conn = await loop.create_unix_connection(RespConnection, address.path)
            else:
                _, conn = await loop.create_connection(
                    RespConnection, address.host or "localhost", address.port,
                    ssl=address.ssl_context(),
                )  # fmt: skip
            await _handshake(conn, address, name)
            return conn
    except RedisConnectError:
        await _discard(conn)
        raise
    except NotRedisReply as exc:
        await _discard(conn)
        raise RedisConnectError("not_redis", not_redis(address, exc.head)) from None
    except _ClosedEarly:
        await _discard(conn)
        reason = f"{where} closed the connection before answering"
        raise RedisConnectError("unreachable", reason) from None
    except TimeoutError:
        await _discard(conn)
        raise RedisConnectError("timeout", f"{where} did not answer within {timeout:g}s") from None
    except ssl.SSLError as exc:
        await _discard(conn)
        raise RedisConnectError("tls_failed", f"TLS with {where} failed: {exc}") from None
    except socket.gaierror as exc:
        await _discard(conn)
        reason = f"cannot resolve {address.host!r}: {exc.strerror}"
        raise RedisConnectError("unreachable", reason) from None
    except (OSError, ConnectionError) as exc:
        await _discard(conn)
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RedisConnectError("unreachable", f"cannot connect to {where}: {reason}") from None
    except BaseException:
        await _discard(conn)
        raise


async def _handshake(conn: RespConnection, address: RedisAddress, name: str | None) -> None:
    replies: list[tuple[str, asyncio.Future[Any]]] = []
    if address.username is not None:  # as redis-py: a user without a password sends ""
        auth = conn.request("AUTH", address.username, address.password or "")
        replies.append(("AUTH", auth))
    elif address.password is not None:
        replies.append(("AUTH", conn.request("AUTH", address.password)))
    if address.db:
        replies.append((f"SELECT {address.db}", conn.request("SELECT", address.db)))
    if name:
        replies.append(("CLIENT SETNAME", conn.request("CLIENT", "SETNAME", name)))
    replies.append(("PING", conn.request("PING")))
    try:
        for what, waiter in replies:
            reply = await waiter
            if isinstance(reply, hiredis.ReplyError):
                if what == "CLIENT SETNAME" and not str(reply).upper().startswith("NOAUTH"):
                    continue  # an ACL may forbid naming; the connection still works
                raise _classify_reply_error(address, what, reply)
    finally:
        _settle(waiter for _, waiter in replies)


def _settle(waiters: Iterable[asyncio.Future[Any]]) -> None:
    """Leave no handshake reply unclaimed: after a refusal the rest fail when the
    connection is dropped, and asyncio would log each as "never retrieved"."""
    for waiter in waiters:
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            waiter.exception()  # marks a failure as seen; the first one is already raised


async def _discard(conn: RespConnection | None) -> None:
    if conn is not None:
        conn.abort()
        await asyncio.shield(conn.wait_closed())
