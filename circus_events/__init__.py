"""circus-events: one event bus for every worker on every host.

Workers use :class:`Bus` (threads, pre-fork servers) or :class:`AsyncBus`
(asyncio) to talk to their host's bridge; bridges relay through Redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._event import GAP_LATE, GAP_QUEUE_FULL, GAP_UPSTREAM, Event, Gap, GapReason, MessageId
from ._exceptions import (
    ArgumentError,
    BadReply,
    BridgeError,
    BusClosed,
    ChannelError,
    CircusEventsError,
    ConfigError,
    ControlError,
    DecodeError,
    EncodeError,
    MessageTooLarge,
    NoBridgeAnswers,
    ProtocolError,
    PublishTimeout,
    ReceiveTimeout,
    UnsafePathError,
    UsageError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._client.leadership import AsyncLeadership, LeaderChange, Leadership
    from .aio import AsyncBus, AsyncSubscription
    from .client import Bus, Subscription

#: Imported on first use: the clients pull in zmq and asyncio, which the
#: command line (``circus-events bridge`` checking its options, ``status``)
#: mostly does not need; that halves its start-up time.
_LAZY = {
    "AsyncBus": ".aio",
    "AsyncSubscription": ".aio",
    "Bus": ".client",
    "Subscription": ".client",
    "AsyncLeadership": "._client.leadership",
    "LeaderChange": "._client.leadership",
    "Leadership": "._client.leadership",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "GAP_LATE",
    "GAP_QUEUE_FULL",
    "GAP_UPSTREAM",
    "ArgumentError",
    "AsyncBus",
    "AsyncLeadership",
    "AsyncSubscription",
    "BadReply",
    "BridgeError",
    "Bus",
    "BusClosed",
    "ChannelError",
    "CircusEventsError",
    "ConfigError",
    "ControlError",
    "DecodeError",
    "EncodeError",
    "Event",
    "Gap",
    "GapReason",
    "LeaderChange",
    "Leadership",
    "MessageId",
    "MessageTooLarge",
    "NoBridgeAnswers",
    "ProtocolError",
    "PublishTimeout",
    "ReceiveTimeout",
    "Subscription",
    "UnsafePathError",
    "UsageError",
    "__version__",
]
