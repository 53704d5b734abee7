"""The parts of :class:`~circus_events.Bus` and :class:`~circus_events.AsyncBus`.

``limits``, ``queues``, ``batch`` and ``core`` are pure (no socket, clock or
environment: the time comes in as an argument) and unit-tested to full
branch coverage; ``options`` resolves arguments and the environment,
``transport`` opens and translates the ZeroMQ sockets, and ``driver`` holds
what both clients do the same way around their I/O.
"""
