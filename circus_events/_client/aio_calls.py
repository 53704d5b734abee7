"""Small awaitables of :class:`circus_events.AsyncBus`: handlers and bounded waits."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .._event import Event
from .._exceptions import PublishTimeout

__all__ = ["call", "guarded", "within"]

log = logging.getLogger("circus_events.client")


async def within(waiting: Awaitable[Any], timeout: float | None) -> bool:
    """True if ``waiting`` finished within ``timeout`` (None: the publish
    timeout of a send), False if it timed out."""
    try:
        await asyncio.wait_for(waiting, timeout)
    except (TimeoutError, PublishTimeout):
        return False
    return True


async def call(sink: Callable[[Event], Any], event: Event) -> None:
    """Give ``event`` to a sink, awaiting it if it is a coroutine function."""
    result = sink(event)
    if inspect.isawaitable(result):
        await result


def guarded(handler: Callable[[Event], Any]) -> Callable[[Event], Awaitable[None]]:
    """Run a handler (sync or async); its exception is logged, never ends the reader."""

    async def run(event: Event) -> None:
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("handler %r failed on %r", handler, event)

    return run
