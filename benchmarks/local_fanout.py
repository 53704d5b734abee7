"""Local fan-out: circus-events through its bridge against a raw pyzmq proxy.

One part of ``circus-events bench``, alone, with four subscribers and 5,000
msg/s latency runs: the harness (:mod:`circus_events.bench`) runs the
topology, the workers and the figures; see :mod:`circus_events.bench.harness`
for what is measured and how.

Cases: ``zmq-proxy`` (baseline: ``zmq.proxy(XSUB, XPUB)`` with the bridge's
high-water marks and ``XPUB_NODROP``), ``ce-raw`` (one bridge, ``Bus`` with
``codec="raw"``, subscribers iterating ``get``), ``ce-json`` (``codec="json"``,
a dict of ~100 bytes), ``ce-raw-handler`` (subscribers in a ``Bus.on``
handler).

Usage::

    .venv/bin/python benchmarks/local_fanout.py
    .venv/bin/python benchmarks/local_fanout.py --quick
    .venv/bin/python benchmarks/local_fanout.py --cases zmq-proxy,ce-raw,ce-raw-handler
"""

from __future__ import annotations

from circus_events.bench.script import Script, main

SCRIPT = Script(
    description=__doc__.split("\n\n")[0],
    cases={
        "local": {
            "zmq-proxy": "zmq-proxy",
            "ce-raw": "ce-local",
            "ce-json": "ce-local-json",
            "ce-raw-handler": "ce-local-handler",
        }
    },
    default_cases="zmq-proxy,ce-raw,ce-json",
)

if __name__ == "__main__":
    main(SCRIPT)
