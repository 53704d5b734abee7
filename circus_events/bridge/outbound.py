"""The outbound queue of the publishing connection: waiting, then in flight.

Theory of operation
-------------------
Every message bound for Redis is one pre-encoded ``PUBLISH`` command (an
``XADD`` in stream mode). It waits in the *pending* queue until the next
flush, which moves everything pending into one *batch*, written to the
connection in a single write.
A batch stays *in flight* until Redis has answered each of its commands;
replies arrive in order, so counting them is enough (no per-message future,
no per-message round trip). Control commands (heartbeat, presence) share
the same ordered in-flight list, each with a callback for its reply.

Delivery to Redis is at least once: when the connection is lost, every
message not yet answered goes back to the front of the pending queue, in
order, and is sent again after the reconnect. Redis may have executed some
of them before the connection died (the reply was lost), so a peer can
receive a message twice; receivers drop duplicates by sequence number.

The pending queue is bounded by ``max_bytes`` counted in Redis value bytes
(not command bytes) whenever the owner calls :meth:`OutboundQueue.trim`:
while messages cannot be written (no connection, a full write buffer). Past
the bound the oldest messages are dropped and counted exactly in
:attr:`OutboundQueue.dropped`. Messages already written to a live connection
are not counted against it (the transport's write-buffer limit bounds them);
after a connection loss they rejoin the pending queue and count again.

A command may carry a batch of several messages (see the envelope): the
counters (published, dropped, buffered) count messages, not commands, so
they can be compared with what workers sent and received.

A command may carry a *tag* (stream mode: the envelope of a local worker's
frame): once Redis has answered it with success, ``on_acked`` gets the
tags of each completed batch, in order (tags of refused commands are None),
and the bridge confirms those messages to their workers. A batch answered
only in part when the connection dies gives its answered tags then. The tag
of a command dropped (the bound) or refused goes to ``on_lost``.

Sans-IO: the caller writes the bytes :meth:`take` and :meth:`control`
return, in the order it gets them, and passes the loop time in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Final

from .._exceptions import ProtocolError

__all__ = ["OutboundQueue", "ReplyCallback"]

#: A control command's callback: its reply, or a ConnectionError if lost.
ReplyCallback = Callable[[Any], None]

_LOST: Final = ConnectionError("the Redis connection closed before the reply")


class _Batch:
    """Commands written in one write; ``acked`` of them are answered."""

    __slots__ = (
        "acked",
        "cmds",
        "count",
        "counts",
        "messages",
        "nbytes",
        "sent_at",
        "sizes",
        "tags",
    )

    def __init__(
        self,
        cmds: deque[bytes],
        sizes: deque[int],
        counts: deque[int],
        tags: deque[Any],
        nbytes: int,
        messages: int,
        sent_at: float,
    ) -> None:
        self.cmds = cmds
        self.sizes = sizes
        #: Per command: what ``on_acked`` gets once it is answered, or None.
        self.tags = tags
        #: Messages per command (a command may carry a batch of them).
        self.counts = counts
        self.count = len(cmds)
        self.messages = messages
        self.nbytes = nbytes
        self.acked = 0
        self.sent_at = sent_at

    def acked_messages(self) -> int:
        return sum(islice(self.counts, self.acked))


class _Control:
    """One control command and the callback that wants its reply."""

    __slots__ = ("callback", "sent_at")

    def __init__(self, callback: ReplyCallback | None, sent_at: float) -> None:
        self.callback = callback
        self.sent_at = sent_at


class OutboundQueue:
    """Pending and in-flight PUBLISH (or XADD) commands of one publishing connection."""

    __slots__ = (
        "_command",
        "_counts",
        "_inflight",
        "_inflight_bytes",
        "_inflight_messages",
        "_ok",
        "_on_error",
        "_pending",
        "_sizes",
        "_tags",
        "dropped",
        "errors",
        "max_bytes",
        "on_acked",
        "on_lost",
        "pending_bytes",
        "pending_messages",
        "published",
    )

    def __init__(
        self,
        max_bytes: int,
        *,
        reply_type: type = int,
        command: str = "PUBLISH",
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        #: Told why, each time Redis refuses a message's command.
        self._on_error = on_error
        #: The class of a successful reply (PUBLISH: int; XADD: bytes, the entry id).
        self._ok = reply_type
        self._command = command
        self._pending: deque[bytes] = deque()
        self._sizes: deque[int] = deque()
        self._counts: deque[int] = deque()
        self._tags: deque[Any] = deque()
        #: Told the tags of each batch Redis has answered (see the module docstring).
        self.on_acked: Callable[[deque[Any]], None] | None = None
        #: Gets the tag of a command dropped or refused: Redis never took it.
        self.on_lost: Callable[[Any], None] | None = None
        self.pending_bytes = 0
        self.pending_messages = 0
        self._inflight: deque[_Batch | _Control] = deque()
        self._inflight_messages = 0
        self._inflight_bytes = 0
        #: Messages Redis acknowledged.
        self.published = 0
        #: Messages dropped, oldest first, because the pending bytes passed max_bytes.
        self.dropped = 0
        #: Messages Redis answered with an error (for example an ACL refusal).
        self.errors = 0

    # -- producer side ----------------------------------------------------------

    def push(self, cmd: bytes, size: int, messages: int = 1, tag: Any = None) -> None:
        """Queue one encoded PUBLISH whose value is ``size`` bytes and holds
        ``messages``; ``tag`` goes to ``on_acked`` once Redis has it."""
        self._pending.append(cmd)
        self._sizes.append(size)
        self._counts.append(messages)
        self._tags.append(tag)
        self.pending_bytes += size
        self.pending_messages += messages

    def trim(self) -> None:
        """Drop the oldest pending commands until they fit in ``max_bytes``."""
        pending, sizes, counts = self._pending, self._sizes, self._counts
        while self.pending_bytes > self.max_bytes and pending:
            pending.popleft()
            tag = self._tags.popleft()
            if tag is not None and self.on_lost is not None:
                self.on_lost(tag)
            self.pending_bytes -= sizes.popleft()
            dropped = counts.popleft()
            self.pending_messages -= dropped
            self.dropped += dropped

    def take(self, now: float) -> bytes | None:
        """Move every pending command into one in-flight batch; return the bytes to write."""
        if not self._pending:
            return None
        batch = _Batch(
            self._pending,
            self._sizes,
            self._counts,
            self._tags,
            self.pending_bytes,
            self.pending_messages,
            now,
        )
        self._pending = deque()
        self._sizes = deque()
        self._counts = deque()
        self._tags = deque()
        self.pending_bytes = 0
        self.pending_messages = 0
        self._inflight.append(batch)
        self._inflight_messages += batch.messages
        self._inflight_bytes += batch.nbytes
        return b"".join(batch.cmds)

    def control(self, cmd: bytes, callback: ReplyCallback | None, now: float) -> bytes:
        """Register a control command; return its bytes to write now."""
        self._inflight.append(_Control(callback, now))
        return cmd

    # -- connection side --------------------------------------------------------

    def consume(self, reader: Any) -> None:
        """Account every complete reply in ``reader`` (a hiredis.Reader)."""
        gets = reader.gets
        inflight = self._inflight
        ok = self._ok
        while True:
            if not inflight:
                if gets() is not False:
                    raise ProtocolError("Redis sent a reply to a command never sent")
                return
            head = inflight[0]
            if head.__class__ is _Batch:
                assert isinstance(head, _Batch)
                acked = head.acked
                count = head.count
                while acked < count:
                    reply = gets()
                    if reply is False:
                        head.acked = acked
                        return
                    if reply.__class__ is not ok:
                        self._reply_error(reply, head.counts[acked])
                        if self.on_lost is not None and head.tags[acked] is not None:
                            self.on_lost(head.tags[acked])
                        head.tags[acked] = None
                    acked += 1
                inflight.popleft()
                if self.on_acked is not None:
                    self.on_acked(head.tags)
                self.published += head.messages
                self._inflight_messages -= head.messages
                self._inflight_bytes -= head.nbytes
            else:
                assert isinstance(head, _Control)
                reply = gets()
                if reply is False:
                    return
                inflight.popleft()
                if head.callback is not None:
                    head.callback(reply)

    def _reply_error(self, reply: Any, messages: int) -> None:
        self.errors += messages
        self.published -= messages  # counted as published when its batch completes
        if self._on_error is not None:
            self._on_error(f"Redis refused a {self._command}: {reply}")

    def requeue(self) -> int:
        """The connection is gone: unanswered messages go back in front, in order.

        Control callbacks get a ConnectionError. Returns how many messages
        were requeued (the cap may drop some of them at once).
        """
        cmds: deque[bytes] = deque()
        sizes: deque[int] = deque()
        counts: deque[int] = deque()
        tags: deque[Any] = deque()
        for entry in self._inflight:
            if isinstance(entry, _Batch):
                if entry.acked:
                    # Only the first entry can be partly answered.
                    self.published += entry.acked_messages()
                    if self.on_acked is not None:
                        self.on_acked(deque(islice(entry.tags, entry.acked)))
                    entry.cmds = deque(list(entry.cmds)[entry.acked :])
                    entry.sizes = deque(list(entry.sizes)[entry.acked :])
                    entry.counts = deque(list(entry.counts)[entry.acked :])
                    entry.tags = deque(list(entry.tags)[entry.acked :])
                cmds.extend(entry.cmds)
                sizes.extend(entry.sizes)
                counts.extend(entry.counts)
                tags.extend(entry.tags)
            elif entry.callback is not None:
                entry.callback(_LOST)
        self._inflight.clear()
        self._inflight_messages = 0
        self._inflight_bytes = 0
        requeued = sum(counts)
        if requeued:
            cmds.extend(self._pending)
            sizes.extend(self._sizes)
            counts.extend(self._counts)
            tags.extend(self._tags)
            self._pending = cmds
            self._sizes = sizes
            self._counts = counts
            self._tags = tags
            self.pending_bytes = sum(sizes)
            self.pending_messages = sum(counts)
            self.trim()
        return requeued

    # -- observation ---------------------------------------------------------------

    def oldest_sent(self) -> float | None:
        """When the oldest unanswered command was written, or None."""
        return self._inflight[0].sent_at if self._inflight else None

    @property
    def pending_count(self) -> int:
        """Messages waiting to be written."""
        return self.pending_messages

    @property
    def inflight_count(self) -> int:
        """Messages written and not yet answered (exact)."""
        head = self._inflight[0] if self._inflight else None
        return self._inflight_messages - (head.acked_messages() if isinstance(head, _Batch) else 0)

    @property
    def inflight_bytes(self) -> int:
        """Value bytes written and not yet answered (exact)."""
        head = self._inflight[0] if self._inflight else None
        if isinstance(head, _Batch) and head.acked:
            answered = sum(size for i, size in enumerate(head.sizes) if i < head.acked)
            return self._inflight_bytes - answered
        return self._inflight_bytes

    @property
    def published_now(self) -> int:
        """Messages acknowledged so far, counting the partly answered batch."""
        head = self._inflight[0] if self._inflight else None
        return self.published + (head.acked_messages() if isinstance(head, _Batch) else 0)
