"""What subscribers receive: :class:`Event`, and :class:`Gap` reports of loss."""

from __future__ import annotations

from typing import Any, Final, Literal, NamedTuple

from .protocol import Envelope, decode_payload

__all__ = ["GAP_LATE", "GAP_QUEUE_FULL", "GAP_UPSTREAM", "Event", "Gap", "GapReason", "MessageId"]

GapReason = Literal["upstream", "queue_full", "late"]
#: Lost before this worker had them: the bridge's per-worker limit, Redis, a restart.
GAP_UPSTREAM: Final = "upstream"
#: Received by this worker but dropped for one subscription, whose queue was
#: full (nobody read it): the others got them.
GAP_QUEUE_FULL: Final = "queue_full"
#: Reached this worker older than its ``max_delay``: dropped unread, for every
#: subscription of the bus.
GAP_LATE: Final = "late"


class MessageId(NamedTuple):
    """Unique id of a message: who sent it, in which run, on which channel, which number."""

    origin: str
    epoch: int
    channel: str
    seq: int

    def __str__(self) -> str:
        return f"{self.origin}~{self.epoch:x}~{self.channel}~{self.seq}"


class Event:
    """One received event. ``data`` is decoded on first access, with the sender's codec.

    The envelope is shared by every event of a batch; ``seq``, ``time`` and
    ``payload`` are each event's own.
    """

    __slots__ = ("_data", "_envelope", "payload", "seq", "time")

    _MISSING: Any = object()

    def __init__(self, envelope: Envelope, seq: int, time: float, payload: bytes) -> None:
        self._envelope = envelope
        #: The sequence number per (origin, channel).
        self.seq = seq
        #: When it was published (Unix time, the publisher's clock).
        self.time = time
        #: The payload bytes as they travelled.
        self.payload = payload
        self._data: Any = Event._MISSING

    @classmethod
    def single(cls, envelope: Envelope) -> Event:
        """The event of a one-message envelope."""
        return cls(envelope, envelope.seq, envelope.time, envelope.payload)

    @property
    def channel(self) -> str:
        return self._envelope.channel

    @property
    def data(self) -> Any:
        """The payload, decoded (raises :class:`DecodeError` if it cannot be)."""
        if self._data is Event._MISSING:
            self._data = decode_payload(self._envelope.codec, self.payload)
        return self._data

    @property
    def id(self) -> MessageId:
        env = self._envelope
        return MessageId(env.origin, env.epoch, env.channel, self.seq)

    @property
    def origin(self) -> str:
        """The worker id of the publisher."""
        return self._envelope.origin

    @property
    def host(self) -> str:
        """The host the publisher runs on."""
        return self._envelope.host

    @property
    def direct(self) -> bool:
        """True for a message sent to this worker with ``send_to``."""
        return self._envelope.target is not None

    def __repr__(self) -> str:
        return (
            f"Event(channel={self.channel!r}, origin={self.origin!r}, host={self.host!r}, "
            f"seq={self.seq}, payload={self.payload[:40]!r})"
        )


class RawEvent(Event):
    """An event of the raw codec: ``data`` is the payload, with nothing to decode.

    A separate class so that ``data`` is a plain slot: on the subscriber's hot
    path, a property there cost a tenth of its time per message.
    """

    __slots__ = ("data",)

    #: The payload bytes (the raw codec).
    data: bytes

    def __init__(self, envelope: Envelope, seq: int, time: float, payload: bytes) -> None:
        # As Event's, less the decoded-data slot that nothing reads here.
        self._envelope = envelope
        self.seq = seq
        self.time = time
        self.payload = self.data = payload


class Gap(NamedTuple):
    """Messages from ``origin`` on ``channel`` that never arrived.

    ``reason`` says where they were lost. ``"upstream"``: before this worker
    (every subscription of the bus missed them); ``seq`` is the message that
    revealed the gap and ``pattern`` is None. ``"queue_full"``: this worker
    had them, but the queue of the subscription to ``pattern`` was full, so
    that subscription alone lost them; ``seq`` is the last one it lost.
    ``"late"``: they reached this worker older than the bus's ``max_delay``
    and were dropped unread (every subscription); ``seq`` is the last one.
    Either way ``missed`` counts each lost message once.
    """

    origin: str
    host: str
    channel: str
    missed: int
    #: The sequence number of the message that revealed the gap (upstream),
    #: or of the last message dropped (queue_full, late).
    seq: int
    #: The pattern of the subscription that dropped them (queue_full only).
    pattern: str | None = None
    reason: GapReason = "upstream"
