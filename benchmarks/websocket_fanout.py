"""Websocket fan-out against python-socketio, broadcaster and channels (issue 15).

A thin entry point into :mod:`circus_events.bench.ws_fanout` (also run by
``circus-events bench --websocket``): 1,000 and 5,000 sockets over 4 uvicorn
workers on host B, events published on host A at a fixed rate; deliveries/s,
p50/p99 latency, CPU per 10k deliveries, memory per idle socket, Redis
connections per host, for every system in the same run.

Usage::

    .venv/bin/python benchmarks/websocket_fanout.py                 # 1,000 and 5,000 sockets
    .venv/bin/python benchmarks/websocket_fanout.py --quick         # 200 and 1,000, 5 s
    .venv/bin/python benchmarks/websocket_fanout.py --system ce,socketio --sockets 1000
    WSB_PROFILE=/tmp/prof .venv/bin/python benchmarks/websocket_fanout.py --system ce
        # cProfile of each server in /tmp/prof.<port>
"""

from circus_events.bench.ws_fanout import main

if __name__ == "__main__":
    main()
