"""circus-events: one event bus for every worker on every host.

Workers use :class:`Bus` (threads, pre-fork servers) or :class:`AsyncBus`
(asyncio) to talk to their host's bridge; bridges relay through Redis.
"""

from ._client.leadership import AsyncLeadership, LeaderChange, Leadership
from ._event import GAP_QUEUE_FULL, GAP_UPSTREAM, Event, Gap, GapReason, MessageId
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
from .aio import AsyncBus, AsyncSubscription
from .client import Bus, Subscription

__all__ = [
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
