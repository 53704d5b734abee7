"""Cross-host relay: circus-events (two bridges and Redis) against raw redis-py.

One part of ``circus-events bench``, alone, with four subscribers and 5,000
msg/s latency runs: the harness (:mod:`circus_events.bench`) starts a private
redis-server on a free port (never 6379), the bridges as simulated hosts A
and B, the workers, and measures; see :mod:`circus_events.bench.harness`.

Cases (``--mode pubsub``, the default): ``redis-py`` (baseline: pipelined
``PUBLISH``, one ``PubSub`` connection per subscriber), ``ce-raw`` (publisher
on host A -> bridge A -> Redis -> bridge B -> subscribers on host B iterating
``get``), ``ce-raw-handler`` (subscribers in a ``Bus.on`` handler). With
``--mode stream`` the bridges relay through Redis streams and the baseline is
raw redis-py ``XADD``/``XREAD``; ``ce-raw-noconfirm`` is stream mode as it was
before publisher confirms (their cost, same run).

Usage::

    .venv/bin/python benchmarks/cross_host.py
    .venv/bin/python benchmarks/cross_host.py --quick
    .venv/bin/python benchmarks/cross_host.py --mode stream --quick
"""

from __future__ import annotations

from circus_events.bench.script import Script, main

SCRIPT = Script(
    description=__doc__.split("\n\n")[0],
    cases={
        "pubsub": {
            "redis-py": "redis-pubsub",
            "ce-raw": "ce-pubsub",
            "ce-raw-handler": "ce-pubsub-handler",
        },
        "stream": {
            "redis-py": "redis-stream",
            "ce-raw": "ce-stream",
            "ce-raw-handler": "ce-stream-handler",
            "ce-raw-noconfirm": "ce-stream-noconfirm",
        },
    },
    default_cases="redis-py,ce-raw,ce-raw-handler",
)

if __name__ == "__main__":
    main(SCRIPT)
