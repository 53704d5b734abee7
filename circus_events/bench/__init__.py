"""``circus-events bench``: circus-events against raw Redis/ZeroMQ and peer libraries.

Not part of the runtime: nothing in ``circus_events`` imports this package
except the ``bench`` command, inside its body (``tests/test_layering.py``
checks). Importing the package itself imports nothing.

Modules, from the bottom: :mod:`.servers` (a private redis-server, shared
with the tests), :mod:`.cases` (systems, bridges, ratios, options: data),
:mod:`.workers` (the circus-events worker processes and the figures),
:mod:`.baselines` (raw pyzmq and redis-py workers), :mod:`.peers` and
``peer_worker.py`` (the peer libraries, in their own venv), :mod:`.infra`
(bridges, sampling, the zmq proxy), :mod:`.stack` (the processes of one
run), :mod:`.report` (table, JSON, charts), :mod:`.harness` (what runs, in
which order; ``bench``).
"""
