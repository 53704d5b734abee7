"""What ``circus-events bench`` measures: the systems, the bridges, the ratios, the options.

Data only: :mod:`.harness` runs these cases and :mod:`.report` summarises
them; both import this module, neither imports the other's caller.
"""

from __future__ import annotations

import dataclasses
from typing import Final

NAMESPACE: Final = "bench"
STREAM_NAMESPACE: Final = "benchs"
NO_CONFIRMS_NAMESPACE: Final = "benchn"
#: Bridges: name -> (host, namespace, mode); mode None: no Redis (single host).
#: ``stream-no-confirms``: stream mode as it was before publisher confirms
#: (the bench's baseline for their cost; see ``infra.start_bridge``).
BRIDGES: Final = {
    "local": ("bench-local", NAMESPACE, None),
    "a": ("host-a", NAMESPACE, "pubsub"),
    "b": ("host-b", NAMESPACE, "pubsub"),
    "sa": ("stream-a", STREAM_NAMESPACE, "stream"),
    "sb": ("stream-b", STREAM_NAMESPACE, "stream"),
    "na": ("plain-a", NO_CONFIRMS_NAMESPACE, "stream-no-confirms"),
    "nb": ("plain-b", NO_CONFIRMS_NAMESPACE, "stream-no-confirms"),
}


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    label: str
    kind: str  # "circus-events", "baseline" or "peer"
    bridges: tuple[str, str]  # publisher's and subscribers' bridge ("" for none)
    codec: str = "raw"
    #: Subscribers take events in a ``Bus.on`` handler instead of iterating ``get()``.
    handler: bool = False
    #: Measured by a plain ``circus-events bench``; the others only when named
    #: (``Options.systems``, the scripts in ``benchmarks/``).
    default: bool = True


SYSTEMS: Final = {
    s.name: s
    for s in (
        System("zmq-proxy", "raw pyzmq XSUB/XPUB proxy", "baseline", ("", "")),
        System("ce-local", "circus-events local", "circus-events", ("local", "local")),
        System("redis-pubsub", "raw redis-py PUBLISH/SUBSCRIBE", "baseline", ("", "")),
        System("ce-pubsub", "circus-events pub/sub", "circus-events", ("a", "b")),
        System("redis-stream", "raw redis-py XADD/XREAD", "baseline", ("", "")),
        System("ce-stream", "circus-events stream", "circus-events", ("sa", "sb")),
        System("ce-stream-noconfirm", "circus-events stream, no confirms", "circus-events",
               ("na", "nb")),
        System("broadcaster", "broadcaster (Redis)", "peer", ("", "")),
        System("channels-redis", "channels_redis PubSub layer", "peer", ("", "")),
        # Variants for benchmarks/local_fanout.py and cross_host.py.
        System("ce-local-json", "circus-events local, JSON", "circus-events",
               ("local", "local"), codec="json", default=False),
        System("ce-local-handler", "circus-events local, handler", "circus-events",
               ("local", "local"), handler=True, default=False),
        System("ce-pubsub-handler", "circus-events pub/sub, handler", "circus-events",
               ("a", "b"), handler=True, default=False),
        System("ce-stream-handler", "circus-events stream, handler", "circus-events",
               ("sa", "sb"), handler=True, default=False),
    )
}  # fmt: skip
#: (system, baseline, target ratio, what) for the throughput ratios printed.
RATIOS: Final = (
    ("ce-local", "zmq-proxy", 0.7, "local fan-out"),
    ("ce-pubsub", "redis-pubsub", 1.0, "cross-host pub/sub"),
    ("ce-stream", "redis-stream", 1.0, "cross-host stream"),
    ("ce-stream", "redis-pubsub", 1.0, "cross-host stream vs raw pub/sub"),
    ("ce-stream", "ce-stream-noconfirm", 0.8, "stream with publisher confirms vs without"),
    ("ce-pubsub", "broadcaster", 10.0, "cross-host pub/sub vs broadcaster"),
    ("ce-pubsub", "channels-redis", 10.0, "cross-host pub/sub vs channels_redis"),
)
#: Width of a fault timeline's bins, seconds.
BIN_SECONDS: Final = 0.1


@dataclasses.dataclass(frozen=True)
class Options:
    """What one ``circus-events bench`` run measures."""

    workers: tuple[int, ...] = (1, 8, 32)
    messages: int = 100_000  # per throughput run, circus-events and raw baselines
    peer_messages: int = 10_000  # per throughput run, peers (a few thousand msg/s)
    repeats: int = 3
    rate: float = 1000.0  # latency runs, msg/s
    latency_seconds: float = 4.0
    warmup: int = 100
    peers: bool = True
    faults: bool = True
    stuck_seconds: float = 6.0  # the stuck subscriber is stopped from 1 s to this
    fault_seconds: float = 8.0  # outage run length
    stuck_rate: float = 10_000.0
    outage_rate: float = 2_000.0
    outage_at: float = 1.5
    outage_seconds: float = 3.0
    quick: bool = False
    smoke: bool = False
    keep: bool = False
    #: The systems to measure, by name; empty: every ``default`` one.
    systems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in self.systems if name not in SYSTEMS]
        if unknown:
            raise ValueError(f"unknown system {unknown[0]!r} (known: {', '.join(SYSTEMS)})")

    def selected(self) -> list[System]:
        """The systems this run measures, in table order."""
        if not self.systems:
            return [s for s in SYSTEMS.values() if s.default]
        return [s for s in SYSTEMS.values() if s.name in self.systems]

    @classmethod
    def preset(cls, quick: bool = False, smoke: bool = False) -> Options:
        if smoke:
            return cls(
                workers=(1,), messages=300, peer_messages=100, repeats=1, rate=1000.0,
                latency_seconds=0.3, warmup=10, peers=False, faults=False, smoke=True,
            )  # fmt: skip
        if quick:
            return cls(
                workers=(1, 8), messages=20_000, peer_messages=2_000, repeats=1,
                latency_seconds=1.0, stuck_seconds=3.0, fault_seconds=7.0, outage_at=1.0,
                quick=True,
            )  # fmt: skip
        return cls()


@dataclasses.dataclass
class RunResult:
    system: str
    mode: str
    workers: int
    published: int
    expected: int
    received: int
    lost: int
    reported_missed: int
    seconds: float
    delivered_per_s: float
    latency_us: dict[str, float]
    cpu_s_per_10k: float
    cpu_s: dict[str, float]
    redis_connections_sub_host: int | None
    redis_connections: dict[str, int]
    bridge_peak_rss_bytes: int | None
    timeline: dict[str, list[float]] = dataclasses.field(default_factory=dict)
