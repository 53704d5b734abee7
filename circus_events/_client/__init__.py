"""The parts of :class:`~circus_events.Bus` and :class:`~circus_events.AsyncBus`.

Pure (no socket, clock, random source or environment: the time comes in as
an argument), unit-tested to full branch coverage: ``limits`` (every
constant), ``batch`` and ``queues`` (the value types), ``publishing`` and
``core`` (:class:`BusCore`: every rule), ``plans`` (``sync()``/``flush()``).

Around them: ``options`` resolves arguments and the environment,
``transport`` opens and translates the ZeroMQ sockets, ``driver`` is what
both buses share around their I/O, and ``threaded``/``sync_queue`` are the
sync bus's threads (the async one is :mod:`circus_events.aio`).
"""
