"""What every process of one measurement sees (picklable, frozen)."""

from __future__ import annotations

import dataclasses

from .workers import BusTarget


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One measurement: a system, a mode, a worker count, a unique channel."""

    system: str
    mode: str  # "throughput", "latency" or "timeline"
    messages: int
    rate: float  # msg/s for latency and timeline runs; 0: as fast as possible
    channel: str  # unique per run, so runs cannot see each other's messages
    warmup: int
    workers: int  # subscribing workers
    pub_bus: BusTarget
    sub_bus: BusTarget
    redis_port: int = 0
    proxy_in: str = ""
    proxy_out: str = ""
    batch: int = 1000  # raw redis-py: commands per pipeline execute()
    codec: str = "raw"

    @property
    def stream_key(self) -> str:
        return f"bench:stream:{self.channel}"
