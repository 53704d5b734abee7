"""circus-events: one event bus for every worker on every host.

Workers use :class:`Bus` (threads, pre-fork servers) or :class:`AsyncBus`
(asyncio) to talk to their host's bridge; bridges relay through Redis.
"""

from ._event import Event, Gap, MessageId
from ._exceptions import (
    BridgeError,
    BusClosed,
    ChannelError,
    CircusEventsError,
    ConfigError,
    DecodeError,
    EncodeError,
    MessageTooLarge,
    ProtocolError,
    PublishTimeout,
    UnsafePathError,
)
from ._version import __version__
from .aio import AsyncBus, AsyncSubscription
from .client import Bus, Subscription

__all__ = [
    "AsyncBus",
    "AsyncSubscription",
    "BridgeError",
    "Bus",
    "BusClosed",
    "ChannelError",
    "CircusEventsError",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "Event",
    "Gap",
    "MessageId",
    "MessageTooLarge",
    "ProtocolError",
    "PublishTimeout",
    "Subscription",
    "UnsafePathError",
    "__version__",
]
