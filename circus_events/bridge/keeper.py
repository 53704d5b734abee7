"""Keep one Redis connection open: connect, serve, back off, reconnect.

:class:`ConnectionKeeper` owns the retry policy, and its owner the meaning
of a connection: the keeper calls ``connected(conn, outage)`` once a
connection is ready, ``disconnected(conn, reason, lost)`` when it is gone
(always, also on close; ``lost`` is False when closing), and
``failed(error)`` for each attempt that failed. Retries
wait a jittered exponential backoff, :data:`BACKOFF_INITIAL` doubling to
:data:`BACKOFF_MAX` (each delay 50-100% of that, so that bridges restarted
together do not retry in step). A connection that dies within
:data:`STABLE_AFTER` does not reset the backoff: a server that accepts and
then drops us (``maxclients``, an ACL) is not hammered.

:class:`LogThrottle` keeps a retry loop to one log line per problem per
:data:`LOG_REPEAT_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Final

from .resp import RedisAddress, RedisConnectError, RespConnection, open_connection

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "LOG_REPEAT_INTERVAL",
    "STABLE_AFTER",
    "ConnectionKeeper",
    "LogThrottle",
    "backoff",
    "client_name",
]

BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 1.0
#: A connection that lived less than this does not reset the backoff.
STABLE_AFTER: Final = 5.0
#: The same problem is logged again at most this often.
LOG_REPEAT_INTERVAL: Final = 30.0
#: Problems a LogThrottle remembers at once, and the length of each key kept.
MAX_KEYS: Final = 256
MAX_KEY_CHARS: Final = 200


def backoff(failures: int) -> float:
    """The delay before the next attempt after ``failures`` failed ones (>= 1)."""
    delay: float = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** min(failures - 1, 16))
    return delay * random.uniform(0.5, 1.0)


def client_name(host: str, role: str) -> str:
    """The ``CLIENT SETNAME`` of a bridge connection: ``circus-events:<host>:<role>``."""
    # CLIENT SETNAME refuses spaces and non-printable characters.
    safe = "".join(c if "!" <= c <= "~" else "_" for c in host)
    return f"circus-events:{safe}:{role}"


class LogThrottle:
    """Say yes to a key at most once per ``interval`` seconds.

    Keys may carry text a server chose (an error message): each is cut to
    MAX_KEY_CHARS and at most MAX_KEYS are remembered, expired ones first.
    """

    __slots__ = ("_interval", "_last")

    def __init__(self, interval: float = LOG_REPEAT_INTERVAL) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        key = key[:MAX_KEY_CHARS]
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if last is None and len(self._last) >= MAX_KEYS:
            interval = self._interval
            self._last = {k: t for k, t in self._last.items() if now - t < interval}
            if len(self._last) >= MAX_KEYS:
                del self._last[next(iter(self._last))]  # all live: the first remembered goes
        self._last[key] = now
        return True

    def forget(self, key: str) -> None:
        """The problem is over: its next occurrence is logged at once."""
        self._last.pop(key[:MAX_KEY_CHARS], None)


class ConnectionKeeper:
    """Keep one named connection to ``address`` open until ``closing`` is set."""

    def __init__(
        self,
        address: RedisAddress,
        name: str,
        *,
        closing: asyncio.Event,
        connected: Callable[[RespConnection, bool], None],
        disconnected: Callable[[RespConnection, BaseException | None, bool], None],
        failed: Callable[[RedisConnectError], None],
        throttle: LogThrottle,
        logger: logging.Logger,
    ) -> None:
        self.address = address
        self.name = name
        self._closing = closing
        self._connected = connected
        self._disconnected = disconnected
        self._failed = failed
        self._throttle = throttle
        self._log = logger

    async def run(self) -> None:
        failures = 0
        connected_before = False
        while not self._closing.is_set():
            if failures and await self._sleep(backoff(failures)):
                return
            try:
                conn = await open_connection(self.address, name=self.name)
            except RedisConnectError as exc:
                failures += 1
                self._failed(exc)
                continue
            except Exception:  # a bug, not Redis: keep the bridge alive and say so
                failures += 1
                self._log_bug("connecting")
                continue
            reason: BaseException | None = None
            lost = False
            try:
                if self._closing.is_set():
                    return
                since = time.monotonic()
                # outage: anything but a first connection at the first try.
                self._connected(conn, connected_before or failures > 0)
                connected_before = True
                reason = await conn.wait_closed()
                lost = True
                failures = 0 if time.monotonic() - since >= STABLE_AFTER else failures + 1
            except Exception:  # a bug in a handler: drop this connection, keep going
                lost = True
                failures += 1
                self._log_bug("serving")
            finally:
                self._disconnected(conn, reason, lost and not self._closing.is_set())
                await conn.aclose()

    async def _sleep(self, delay: float) -> bool:
        """Sleep unless closing; True if closing."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()
        return self._closing.is_set()

    def _log_bug(self, what: str) -> None:
        if self._throttle.allow(f"bug-{self.name}"):
            self._log.exception("circus-events: unexpected error %s %s", what, self.name)
