"""The heartbeat round trip that ``status`` shows, honest about reconnections.

After a cut link comes back, heartbeats written on the aborted connection
can still drain from the kernel's send queue (or be re-sent) and come back
seconds late: measured against the connections now, they showed a round
trip of 11 s for a while (issue 12). So each measurement carries the
generation it was sent in, a new generation starts whenever a connection
comes or goes, and only a heartbeat of the current generation counts.
Until one does, there is no figure (None), rather than a stale one.
"""

from __future__ import annotations

__all__ = ["RoundTrip"]


class RoundTrip:
    """The last heartbeat round trip measured on the current connections."""

    __slots__ = ("generation", "ms")

    def __init__(self) -> None:
        self.generation = 0
        #: Milliseconds; None until measured on the connections now.
        self.ms: float | None = None

    def restart(self) -> None:
        """A connection came or went: what was sent before measures nothing now."""
        self.generation += 1
        self.ms = None

    def measured(self, sent: float, generation: int, now: float) -> None:
        """A heartbeat sent at ``sent`` in ``generation`` came back at ``now``."""
        if generation == self.generation:
            self.ms = round((now - sent) * 1000.0, 3)
