"""Shared benchmark pieces: moved to :mod:`circus_events.bench.workers` (re-exported here).

The scripts in this directory run as ``python benchmarks/x.py`` and import
``_common``; the code lives in the package so that ``circus-events bench``
works from an installed copy too.
"""

from circus_events.bench.workers import (
    IDLE_SECONDS,
    PAYLOAD_BYTES,
    SETUP_TIMEOUT,
    STAMP,
    BusTarget,
    PublisherResult,
    SubscriberResult,
    Workers,
    WorkerSpec,
    ce_handler_subscriber_main,
    ce_publisher_main,
    ce_subscriber_main,
    json_pad,
    latency_figures,
    pace,
    percentile,
    process_cpu_ns,
    query_bridge,
    stamp_of,
    thread_cpu_ns,
    wait_for_bridge,
)

__all__ = [
    "IDLE_SECONDS",
    "PAYLOAD_BYTES",
    "SETUP_TIMEOUT",
    "STAMP",
    "BusTarget",
    "PublisherResult",
    "SubscriberResult",
    "WorkerSpec",
    "Workers",
    "ce_handler_subscriber_main",
    "ce_publisher_main",
    "ce_subscriber_main",
    "json_pad",
    "latency_figures",
    "pace",
    "percentile",
    "process_cpu_ns",
    "query_bridge",
    "stamp_of",
    "thread_cpu_ns",
    "wait_for_bridge",
]
