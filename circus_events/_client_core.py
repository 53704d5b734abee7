"""The client core's old address: its names now live in :mod:`circus_events._client`.

Kept so that code importing from here (the bench harness, older tests)
still works; new code imports from the ``_client`` modules directly.
"""

from __future__ import annotations

from ._client.batch import Fill, OpenBatch, Prepared, Step
from ._client.core import STATS_DOC, BusCore
from ._client.limits import (
    BATCH_MAX_BYTES,
    BATCH_MAX_COUNT,
    BATCH_MAX_WAIT,
    BURST_MEMORY,
    BURST_MIN,
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SEND_QUEUE,
    EVENT_OVERHEAD_BYTES,
    HOT_GAP,
    MAX_TIMEOUT,
    RECEIVE_HWM,
)
from ._client.options import (
    ClientOptions,
    Scope,
    check_timeout,
    compile_pattern,
    history_args,
    or_forever,
)
from ._client.queues import Failure, HistoryLoad, QueueBound, Subscriber
from ._client.transport import connect_push, connect_sub, transport_error

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_COUNT",
    "BATCH_MAX_WAIT",
    "BURST_MEMORY",
    "BURST_MIN",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_QUEUE_MAX_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SEND_QUEUE",
    "EVENT_OVERHEAD_BYTES",
    "HOT_GAP",
    "MAX_TIMEOUT",
    "RECEIVE_HWM",
    "STATS_DOC",
    "BusCore",
    "ClientOptions",
    "Failure",
    "Fill",
    "HistoryLoad",
    "OpenBatch",
    "Prepared",
    "QueueBound",
    "Scope",
    "Step",
    "Subscriber",
    "check_timeout",
    "compile_pattern",
    "connect_push",
    "connect_sub",
    "history_args",
    "or_forever",
    "transport_error",
]
