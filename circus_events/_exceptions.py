"""The errors circus-events raises.

Every error is a :class:`CircusEventsError`; catch that to catch them all::

    CircusEventsError
    ├── ConfigError            an option or variable has a bad value (names the key)
    │   └── UnsafePathError    the socket folder or a file in it fails its safety check
    ├── ProtocolError          bytes from a peer are not a valid message
    ├── ChannelError           (also ValueError) a channel or pattern name is invalid
    ├── EncodeError            (also ValueError) the codec cannot encode a payload
    ├── DecodeError            a payload cannot be decoded with its codec
    ├── MessageTooLarge        (also ValueError) over ``max_message_bytes``
    ├── ArgumentError          (also ValueError) a bad argument to a public call (names it)
    ├── UsageError             (also RuntimeError) a call where it cannot work (no event loop)
    ├── PublishTimeout         (also TimeoutError) the local bridge took nothing in time
    ├── ReceiveTimeout         (also TimeoutError, queue.Empty) ``get(timeout)`` got nothing
    ├── BusClosed              the bus was closed
    ├── BridgeError            the bridge cannot start or run (socket in use, ...)
    └── ControlError           a control request (``circus-events status``) got no usable answer
        ├── NoBridgeAnswers    (also TimeoutError) nothing answered at ``ctl.sock`` in time
        └── BadReply           the answer is not a JSON object, or says ``error``

The clients translate what their transport raises at their public boundary
(``raise BusClosed(...) from exc``): no ``zmq`` or ``asyncio`` exception
leaves :class:`~circus_events.Bus` or :class:`~circus_events.AsyncBus`.
"""

from __future__ import annotations

import queue

__all__ = [
    "ArgumentError",
    "BadReply",
    "BridgeError",
    "BusClosed",
    "ChannelError",
    "CircusEventsError",
    "ConfigError",
    "ControlError",
    "DecodeError",
    "EncodeError",
    "MessageTooLarge",
    "NoBridgeAnswers",
    "ProtocolError",
    "PublishTimeout",
    "ReceiveTimeout",
    "UnsafePathError",
    "UsageError",
]


class CircusEventsError(Exception):
    """Base class of every error raised by circus-events."""


class ConfigError(CircusEventsError):
    """A configuration value is invalid; ``key`` names the option or variable."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        #: The message without the key (to name the key another way: a flag, a variable).
        self.reason = message


class UnsafePathError(ConfigError):
    """A socket folder, or a file in it, could be controlled by another user.

    ``path`` is the level or file that failed; the message says why and how
    to fix it. A ``ConfigError``: the bridge refuses to start (exit 2).
    """

    def __init__(self, key: str, path: str, message: str) -> None:
        super().__init__(key, message)
        self.path = path


class ProtocolError(CircusEventsError):
    """A peer sent bytes that are not a valid circus-events message."""


class ChannelError(CircusEventsError, ValueError):
    """A channel name or subscription pattern is not allowed."""


class EncodeError(CircusEventsError, ValueError):
    """The bus codec cannot encode the payload given to ``publish``."""


class DecodeError(CircusEventsError):
    """A received payload cannot be decoded with the codec it names."""


class MessageTooLarge(CircusEventsError, ValueError):
    """The encoded message is larger than ``max_message_bytes``."""


class PublishTimeout(CircusEventsError, TimeoutError):
    """The local bridge did not take the message before the publish timeout."""


class ArgumentError(CircusEventsError, ValueError):
    """An argument to a public call has a bad value or type; ``name`` names it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class UsageError(CircusEventsError, RuntimeError):
    """A call made where it cannot work (an ``AsyncBus`` outside its event loop)."""


class ReceiveTimeout(CircusEventsError, TimeoutError, queue.Empty):
    """``Subscription.get(timeout)`` / ``AsyncSubscription.get(timeout)`` got no event in time.

    The same class in both clients. It is also a ``queue.Empty``, which is
    what ``Bus`` raised before (code catching that keeps working), and a
    ``TimeoutError``, which is what ``AsyncBus`` raised before.
    """


class BusClosed(CircusEventsError):
    """The bus was closed; it can no longer publish or receive."""


class BridgeError(CircusEventsError):
    """The bridge cannot start or keep running (for example: already running)."""


class ControlError(CircusEventsError):
    """A request to a bridge's control socket did not get a usable answer."""


class NoBridgeAnswers(ControlError, TimeoutError):
    """No bridge answered at the control socket in time (is it running?)."""


class BadReply(ControlError):
    """The bridge answered with something that is not a JSON object, or an error."""
