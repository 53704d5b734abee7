"""The sync client's subscription iterator: a bounded deque and a condition.

The receiving side appends a frame's events at once and wakes the readers
once per batch of frames, not once per event (a ``queue.Queue`` hand-off
cost ~4 us an event); a reader with nothing queued may receive for itself
(:meth:`ThreadedBus._receive_for`) rather than wait for a hand-over.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import zmq

from .._event import Event, RawEvent
from .._exceptions import BusClosed, ReceiveTimeout
from ..protocol import Pattern
from .driver import END, SubscriptionBase
from .options import check_timeout
from .queues import Failure, QueueBound, Subscriber
from .transport import transport_error

if TYPE_CHECKING:
    from .threaded import ThreadedBus

__all__ = ["Subscription"]

_CONDITIONS_MADE: Final = threading.Lock()
_EVENT_KINDS: Final = frozenset((Event, RawEvent))
_monotonic = time.monotonic


class Subscription(SubscriptionBase):
    """An iterator over the events matching one pattern (from :meth:`Bus.subscribe`).

    The receiver thread appends to a deque and wakes the reader once per
    batch, not once per event: a ``queue.Queue`` hand-off cost ~4 us an event.
    The queue is bounded (:class:`QueueBound`); when full, this subscription
    alone drops what comes, and ``on_gap`` is told (a ``queue_full`` gap).
    """

    _bus: ThreadedBus

    def __init__(self, bus: ThreadedBus, pattern: Pattern, bound: QueueBound) -> None:
        super().__init__(bus, pattern, bound)
        self._items: collections.deque[Any] = collections.deque()
        #: Made when a reader first waits (a third of what a subscribe/close
        #: pair cost); only ever replaced from None under _CONDITIONS_MADE.
        self._changed: threading.Condition | None = None
        #: Readers blocked in get(): waking nobody costs a lock round trip per batch.
        self._readers_waiting = 0
        self._subscriber = Subscriber(
            pattern, self._put, self._wake, self._fail, sink_many=self._put_many, bound=bound
        )

    def _put_many(self, events: list[Event], nbytes: int) -> None:
        # Never waits: a full queue drops for this subscription alone (the
        # receiver thread also serves the handlers and the other subscriptions).
        if self.closed:
            return
        items = self._items
        count = len(events)
        taken = self._bound.admit(count, nbytes, len(items))
        if taken == count:
            items.extend(events)
            return
        if taken:
            items.extend(events[:taken])
        self._bound.drop(events[-1], count - taken)

    def _wake(self) -> None:
        """New items are in (the receiver appended them before it calls this)."""
        if self._readers_waiting:
            self._notify()

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:  # else no reader ever waited: nobody to wake
            with changed:
                changed.notify_all()

    def _condition(self) -> threading.Condition:
        changed = self._changed
        if changed is None:
            with _CONDITIONS_MADE:
                changed = self._changed
                if changed is None:
                    changed = self._changed = threading.Condition(threading.Lock())
        return changed

    def _fail(self, error: Exception) -> None:
        self._items.append(Failure(error))

    def get(self, timeout: float | None = None) -> Event:
        """The next event; raises :class:`ReceiveTimeout` after ``timeout`` seconds
        (also a ``queue.Empty`` and a ``TimeoutError``), :class:`BusClosed` once
        closed and drained."""
        try:
            item = self._items.popleft()
        except IndexError:
            item = self._wait(timeout)
        if item.__class__ in _EVENT_KINDS:
            return item
        if isinstance(item, Failure):
            raise item.error
        if item is END:
            self._items.appendleft(END)
            raise BusClosed("subscription closed")
        event: Event = item
        return event

    def _wait(self, timeout: float | None) -> Any:
        """Block until an item arrives; take it. Safe with several reading threads:
        another may take the item first, and then this one waits again."""
        seconds = check_timeout("timeout", timeout)
        items = self._items
        deadline = None if seconds is None else _monotonic() + seconds
        bus = self._bus
        try:
            while True:
                if not bus._receive_for(items, deadline):
                    self._wait_for_receiver(deadline)
                try:
                    return items.popleft()
                except IndexError:
                    if self.closed:
                        raise BusClosed("subscription closed") from None
                    if deadline is not None and _monotonic() >= deadline:
                        raise self._timeout(seconds) from None
        except zmq.ZMQError as exc:
            raise transport_error(exc, bus.closed) from exc

    def _timeout(self, seconds: float | None) -> ReceiveTimeout:
        return ReceiveTimeout(f"no event for {self.pattern.text!r} within {seconds}s")

    def _wait_for_receiver(self, deadline: float | None) -> None:
        """Wait until the receiver thread has given this subscription something."""
        items = self._items
        changed = self._condition()
        with changed:
            # Counted before items is checked again: a receiver that appended
            # and then saw no reader waiting is seen here by that check.
            self._readers_waiting += 1
            try:
                while not items:
                    if self.closed:
                        raise BusClosed("subscription closed")
                    remaining = None if deadline is None else deadline - _monotonic()
                    if remaining is not None and remaining <= 0:
                        return  # the caller raises ReceiveTimeout
                    changed.wait(remaining)
            finally:
                self._readers_waiting -= 1

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            return self.get()
        except BusClosed:
            raise StopIteration from None

    def _end(self) -> None:
        self.closed = True
        self._items.append(END)
        self._notify()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
