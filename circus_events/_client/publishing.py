"""The publishing half of the client core: numbering, encoding, batching (pure).

Theory of operation: :meth:`Publisher.prepare` checks and encodes a message
once (a channel seen before skips the checks); :meth:`Publisher.place` says
whether it leaves alone or in the open batch, as a :class:`Step`; a
sequence number is used only once the frame carrying it left
(:meth:`Publisher.commit`, :meth:`Publisher.batch_sent`), so a publish that
times out leaves no hole. No clock is read here: ``now`` (monotonic) and
``wall`` (Unix time) come in as arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .._event import Event
from .._exceptions import ArgumentError, ChannelError, MessageTooLarge
from ..protocol import (
    FLAG_HOST_ONLY,
    FLUSH_CHANNEL,
    HEADER,
    RESUME_CHANNEL,
    SYNC_REQUEST,
    Codec,
    Envelope,
    encode_batch,
    encode_frame,
    encode_payload,
    inbox_channel,
    validate_channel,
    validate_worker_id,
)
from .batch import (
    ADDED,
    FULL,
    REFUSED,
    Fill,
    KnownChannel,
    OpenBatch,
    Prepared,
    Step,
    new_tuple,
)
from .confirms import Unconfirmed
from .credit import SendCredit
from .limits import (
    BATCH_MAX_BYTES,
    BATCH_MAX_WAIT,
    BURST_MEMORY,
    BURST_MIN,
    DEFAULT_UNCONFIRMED_MAX_BYTES,
    HOT_GAP,
    MAX_CACHED_CHANNELS,
)

if TYPE_CHECKING:
    from .options import ClientOptions

__all__ = ["SCOPES", "Publisher"]

#: Where a message goes: this process, this host, or every host.
SCOPES: Final = ("process", "host", "cluster")
HELD: Final = Step.HELD
OPENED: Final = Step.OPENED
SEND_BATCH: Final = Step.SEND_BATCH
BATCH_FIRST: Final = Step.BATCH_FIRST
SEND_ALONE: Final = Step.SEND_ALONE
#: The scope of a batch :meth:`Publisher.join` must not extend (a direct
#: message, another codec): equal to no argument a caller can pass.
_UNJOINABLE: Final = object()


class Publisher:
    """A bus's publishing state: sequence numbers, the open batch, the burst."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.published = 0
        #: Bytes of sent messages kept until the bridge confirms them.
        self.unconfirmed_max_bytes = DEFAULT_UNCONFIRMED_MAX_BYTES
        #: Channels already validated, with what publishing on them needs.
        self._known_channels: dict[str, KnownChannel] = {}

    def renew(self, epoch: int) -> None:
        """A new identity for this process: new epoch, fresh sequence numbers."""
        self.epoch = epoch
        self._seqs: dict[str, int] = {}
        #: Sent, not confirmed yet (a forked child resends none of its parent's).
        self.unconfirmed = Unconfirmed()
        #: Bytes sent that the bridge has not read yet (``send_queue_bytes``).
        self.credit = SendCredit(self.options.send_queue_bytes)
        #: Messages let go unconfirmed past unconfirmed_max_bytes.
        self.released = 0
        #: Messages waiting to leave together (publishing side, see OpenBatch).
        self.batch: OpenBatch | None = None
        #: When publish was last called, and how many calls in a row came
        #: within HOT_GAP of the one before.
        self.last_publish = 0.0
        self._streak = 0
        #: When the last batch was opened (monotonic).
        self._batched_at = -BURST_MEMORY
        self._origin = self.options.worker.encode("utf-8")
        self._host = self.options.host.encode("utf-8")

    def prepare(
        self,
        channel: str,
        data: Any,
        scope: str,
        target: str | None = None,
        *,
        system: bool = False,
        codec: Codec | None = None,
    ) -> Prepared:
        """Validate and encode one message; raises before anything is sent."""
        if target is None and codec is None and type(channel) is str:
            # The common case, from what the channel's first message worked out.
            known = self._known_channels.get(channel)
            if known is not None and (scope in ("cluster", "host")):
                payload = encode_payload(self.options.codec, data)
                if known.overhead + len(payload) > self.options.max_message_bytes:
                    raise self._too_large(channel, known.overhead + len(payload))
                if scope == "cluster":
                    return new_tuple(
                        Prepared, (known.cluster_key, channel, payload, known.overhead)
                    )
                return new_tuple(
                    Prepared, (known.host_key, known.host_seq_key, payload, known.overhead)
                )
        encoded = validate_channel(channel, allow_system=system)
        if scope not in SCOPES:
            raise ArgumentError("scope", f"must be one of {', '.join(SCOPES)}, not {scope!r}")
        overhead = len(encoded) + 1 + HEADER.size + len(self._origin) + len(self._host)
        if target is None and codec is None and not system:
            if len(self._known_channels) >= MAX_CACHED_CHANNELS:
                self._known_channels.clear()
            self._known_channels[channel] = KnownChannel(channel, self.options.codec, overhead)
        codec = self.options.codec if codec is None else codec
        payload = encode_payload(codec, data)
        flags = FLAG_HOST_ONLY if scope == "host" else 0
        if target is None:
            seq_key = channel
        else:
            try:
                validate_worker_id(target)
            except ChannelError as exc:
                raise ArgumentError("worker", str(exc)) from None
            seq_key = inbox_channel(target)
            # The topic is the inbox; the channel rides after the names.
            overhead += len(seq_key.encode("utf-8")) + 1
        if flags:
            seq_key += "\0host"
        if overhead + len(payload) > self.options.max_message_bytes:
            raise self._too_large(channel, overhead + len(payload))
        return Prepared((channel, flags, target, codec), seq_key, payload, overhead)

    def _too_large(self, channel: str, size: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"message on {channel!r} is {size} bytes encoded; "
            f"max_message_bytes is {self.options.max_message_bytes}"
        )

    def encode(
        self,
        channel: str,
        data: Any,
        scope: str,
        target: str | None = None,
        *,
        wall: float,
        system: bool = False,
        codec: Codec | None = None,
    ) -> bytes:
        """Validate, number and encode one message (sent at ``wall``, Unix
        time) as a frame of its own."""
        prepared = self.prepare(channel, data, scope, target, system=system, codec=codec)
        frame = self.single_frame(prepared, wall)
        self.commit(prepared)
        return frame

    def single_frame(self, prepared: Prepared, wall: float) -> bytes:
        """The frame of one message sent at ``wall`` (Unix time), numbered
        next (:meth:`commit` once it is sent)."""
        channel, flags, target, codec = prepared.key
        return encode_frame(
            channel,
            origin=self._origin,
            host=self._host,
            epoch=self.epoch,
            seq=self._seqs.get(prepared.seq_key, 0) + 1,
            time=wall,
            codec=codec,
            payload=prepared.payload,
            flags=flags,
            target=target,
        )

    def commit(self, prepared: Prepared, frame: bytes | None = None) -> None:
        """The frame from :meth:`single_frame` left: its number is used; the
        frame (if given) is kept until confirmed, unless it is host-scoped."""
        seq = self._seqs[prepared.seq_key] = self._seqs.get(prepared.seq_key, 0) + 1
        self.published += 1
        if frame is not None and not prepared.key[1] & FLAG_HOST_ONLY:
            self.released += self.unconfirmed.keep(
                prepared.seq_key, seq, 1, frame, self.unconfirmed_max_bytes
            )

    def place(self, prepared: Prepared, burst: bool, wall: float) -> Step:
        """Where a message published at ``wall`` (Unix time) goes: held in a
        batch or sent alone, and what the driver sends now (see :class:`Step`).

        ``burst`` is what :meth:`in_burst` said about this publish; after
        BATCH_FIRST (the batch sent) the driver asks again with the same.
        """
        if self.batch is not None:
            fill = self.hold(prepared, wall)
            if fill:
                return SEND_BATCH if fill is FULL or not burst else HELD
            return BATCH_FIRST
        if burst:
            self.hold(prepared, wall)
            return OPENED
        return SEND_ALONE

    def hold(self, prepared: Prepared, wall: float) -> Fill:
        """Number the message and add it to the open batch, or open one
        (at ``wall``, Unix time). REFUSED, holding nothing, if the open batch
        cannot take it (another kind of message, or no room)."""
        batch = self.batch
        if batch is None:
            seq = self._seqs.get(prepared.seq_key, 0) + 1
            limit = min(BATCH_MAX_BYTES, self.options.max_message_bytes)
            self._batched_at = self.last_publish
            _, flags, target, codec = prepared.key
            scope: object = _UNJOINABLE
            if target is None and codec == self.options.codec:
                scope = "host" if flags & FLAG_HOST_ONLY else "cluster"
            self.batch = OpenBatch(prepared, seq, wall, self.last_publish, limit, scope)
            self.published += 1
            return FULL if self.batch.full else ADDED
        if prepared.key != batch.prepared.key:
            return REFUSED
        added = batch.add(prepared.payload, self.last_publish)
        if added:
            self.published += 1
        return added

    def batch_due(self, now: float) -> bool:
        """True if the open batch should leave without waiting to fill: its
        publisher paused (nothing within HOT_GAP) or it is BATCH_MAX_WAIT old."""
        return now - self.last_publish >= HOT_GAP or now - self._batched_at >= BATCH_MAX_WAIT

    def in_burst(self, now: float) -> bool:
        """Record a publish at ``now`` (monotonic); True if it should be held in
        a batch: it is at least the BURST_MIN-th of a burst."""
        self._streak = self._streak + 1 if now - self.last_publish < HOT_GAP else 0
        self.last_publish = now
        if now - self._batched_at < BURST_MEMORY:
            return self._streak >= 1
        return self._streak >= BURST_MIN

    def join(self, channel: str, data: Any, scope: str, now: float) -> Fill:
        """The hot path of a burst: add a plain publish at ``now`` (monotonic)
        to the open batch. REFUSED if the batch cannot take it without more
        checks: the caller then goes the long way (prepare, place)."""
        batch = self.batch
        if batch is None or channel != batch.channel or scope != batch.scope:
            return REFUSED
        if batch.raw and data.__class__ is bytes:
            payload = data
        else:
            payload = encode_payload(self.options.codec, data)
        added = batch.add(payload, now)
        if added:
            self.published += 1
        return added

    def batch_frame(self) -> bytes:
        """The open batch as one frame; it stays open until :meth:`batch_sent`."""
        batch = self.batch
        assert batch is not None
        channel, flags, target, codec = batch.prepared.key
        return encode_batch(
            channel,
            origin=self._origin,
            host=self._host,
            epoch=self.epoch,
            first_seq=batch.first_seq,
            times=batch.times,
            codec=codec,
            payloads=batch.payloads,
            flags=flags,
            target=target,
        )

    def batch_sent(self, frame: bytes | None = None) -> None:
        """The batch frame left: its numbers are used; the frame (if given)
        is kept until confirmed, unless it is host-scoped."""
        batch = self.batch
        assert batch is not None
        prepared = batch.prepared
        last = self._seqs[prepared.seq_key] = batch.first_seq + len(batch.payloads) - 1
        self.batch = None
        if frame is not None and not prepared.key[1] & FLAG_HOST_ONLY:
            self.released += self.unconfirmed.keep(
                prepared.seq_key, last, len(batch.payloads), frame, self.unconfirmed_max_bytes
            )

    def flush_frame(self, token: bytes, wall: float) -> bytes:
        """A marker sent to our own inbox: when it comes back, the bridge has
        taken everything sent before it (one PUSH pipe is first in, first out)."""
        worker = self.options.worker
        return self.encode(
            FLUSH_CHANNEL, token, "host", worker, wall=wall, system=True, codec=Codec.RAW
        )

    def credit_frame(self, now: float, wall: float) -> bytes:
        """A credit marker (:mod:`.credit`) for everything sent so far."""
        return self.flush_frame(self.credit.marker_token(now), wall)

    def resume_frame(self, instance: bytes, wall: float) -> bytes:
        """The marker sent before resending to a bridge that said hello:
        that bridge relays our cluster frames from this one on."""
        worker = self.options.worker
        return self.encode(
            RESUME_CHANNEL, instance, "host", worker, wall=wall, system=True, codec=Codec.RAW
        )

    def hello(self, kind: int, instance: bytes, wall: float) -> list[bytes]:
        """A bridge said hello (call under the send lock): the frames to send,
        in order: a resume marker and every frame not confirmed, or none if
        the bridge does not confirm."""
        resend = self.unconfirmed.hello(kind, instance)
        if resend is None:
            return []
        return [self.resume_frame(instance, wall), *resend]

    def sync_request(self, token: bytes) -> bytes:
        """A request sent up the subscription socket, after our subscriptions:
        the bridge answers on our inbox once it has applied all of them."""
        return SYNC_REQUEST + self.options.worker.encode("utf-8") + b"\0" + token

    def local_event(self, channel: str, data: Any, wall: float) -> Event:
        """A ``scope="process"`` event: encoded like any other, delivered in-process."""
        validate_channel(channel)
        payload = encode_payload(self.options.codec, data)
        if len(payload) > self.options.max_message_bytes:
            raise MessageTooLarge(
                f"message on {channel!r} is {len(payload)} bytes encoded; "
                f"max_message_bytes is {self.options.max_message_bytes}"
            )
        key = channel + "\0process"
        seq = self._seqs.get(key, 0) + 1
        self._seqs[key] = seq
        envelope = Envelope(
            channel,
            self.options.worker,
            self.options.host,
            self.epoch,
            seq,
            wall,
            self.options.codec,
            0,
            payload,
        )
        return Event.single(envelope)
