"""Leader election under random faults: 1,000 failovers, checked, with takeover times.

    .venv/bin/python benchmarks/leader_chaos.py [--failovers 1000] [--ttl 0.5]

3 simulated hosts (bridges with their own CIRCUS_EVENTS_HOST) x 3 candidate
workers x 3 roles through a real redis-server; faults: SIGKILL or SIGSTOP of
a leader, release, SIGKILL of its bridge, its bridge cut off from Redis
until the takeover (connections killed, its ACL user disabled), its bridge's
connections killed once (a blip: it reconnects at once, and a term whose
renewals did not fall in the gap rightly goes on: ``kept_terms``), Redis
killed and restarted. The checker asserts one leader per role at a time,
strictly increasing tokens, fenced writes in their own terms only. Prints
the takeover distribution per fault kind (seconds from the fault to the next
term) as JSON, for the README.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from circus_events.bench.leaders import Cluster, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=1000)
    parser.add_argument("--ttl", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ce-chaos-", dir="/tmp") as workdir:
        started = time.monotonic()
        with Cluster(workdir, ttl=args.ttl, seed=args.seed) as cluster:
            failovers = cluster.chaos(args.failovers)
            cluster.close_all()
            figures = check(cluster)
        figures["failovers"] = failovers
        figures["ttl"] = args.ttl
        figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
