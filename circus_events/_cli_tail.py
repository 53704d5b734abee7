"""``circus-events tail``: print events as they arrive, and say when the bridge
goes away and when it is back.

The bus itself reconnects without a word (libzmq does it), so a tail alone
cannot tell a quiet bus from a dead bridge. :class:`BridgeWatch` asks the
bridge's control socket (``ping``, which answers with the bridge's pid and
start time) every :data:`WATCH_INTERVAL` and prints one line on stderr when
the answer stops, when it comes back, and when a different bridge answered
(a restart faster than one look). stdout keeps only events, so ``--json``
output stays one event per line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

import click

from ._cli_output import format_event
from ._config import relabel
from ._event import Event
from ._exceptions import CircusEventsError, ConfigError
from .protocol import Pattern

__all__ = ["WATCH_INTERVAL", "BridgeWatch", "run_tail"]

#: Seconds between two looks at the bridge: a restart shows within about this.
WATCH_INTERVAL: Final = 1.0
#: Seconds a look waits for the bridge's answer: twice the control client's
#: default, so a bridge slowed by a loaded machine is not reported gone.
WATCH_TIMEOUT: Final = 2.0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class BridgeWatch:
    """Tells (``say``) when the bridge at ``directory``/``namespace`` goes and comes back."""

    def __init__(
        self,
        directory: str,
        namespace: str,
        say: Callable[[str, str], None],
        *,
        interval: float = WATCH_INTERVAL,
    ) -> None:
        self.directory = directory
        self.namespace = namespace
        self.say = say
        self.interval = interval
        #: (pid, start time) of the bridge last seen; None: not answering.
        self.bridge: tuple[Any, Any] | None = None
        self.known = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="circus-events-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WATCH_TIMEOUT + self.interval + 1)

    def look(self) -> None:
        """One look at the bridge; says what changed since the last one."""
        from .control import query  # noqa: PLC0415

        try:
            reply = query(self.directory, self.namespace, "ping", WATCH_TIMEOUT)
            now: tuple[Any, Any] | None = (reply.get("pid"), reply.get("started"))
        except CircusEventsError:  # ControlError, or an unsafe folder
            now = None
        where = os.path.join(self.directory, self.namespace)
        before, self.bridge = self.bridge, now
        if not self.known:  # the first look: nothing changed yet
            self.known = True
        elif before is not None and now is None:
            self.say(f"-- the bridge at {where} went away; waiting for it", "red")
        elif before is None and now is not None:
            self.say(f"-- the bridge at {where} is back (pid {now[0]})", "green")
        elif before is not None and now is not None and now != before:
            self.say(f"-- the bridge at {where} restarted (pid {now[0]})", "yellow")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.look()


def run_tail(
    bus_kwargs: dict[str, Any],
    patterns: tuple[str, ...],
    *,
    as_json: bool,
    count: int | None,
    history: int | None,
    fail: Callable[[str, int], Any],
    labels: Mapping[str, str],
) -> None:
    """The body of ``circus-events tail`` (its options are in ``cli``)."""
    from .client import Bus  # noqa: PLC0415

    seen = threading.Event()
    printed = 0
    lock = threading.Lock()
    gone = threading.Event()  # stdout's reader went away (``tail | head -n 1``)

    def show(event: Event) -> None:
        nonlocal printed
        with lock:
            if gone.is_set() or (count is not None and printed >= count):
                return
            try:
                click.echo(format_event(event, as_json), color=None if not as_json else False)
            except BrokenPipeError:
                # Raised here, the bus's handler guard would log it for every
                # later event and tail would never end: stop as a pipe does.
                gone.set()
                seen.set()
                return
            printed += 1
            if count is not None and printed >= count:
                seen.set()

    def gap(report: Any) -> None:
        say(f"!! missed {report.missed} event(s) from {report.origin} on {report.channel}", "red")

    def say(line: str, colour: str) -> None:
        with lock:
            click.secho(line, fg=colour, err=True)

    try:
        bus = Bus(**bus_kwargs, on_gap=gap)
    except CircusEventsError as exc:  # named as given: --flag or CIRCUS_EVENTS_VARIABLE
        fail(str(relabel(exc, labels) if isinstance(exc, ConfigError) else exc), EXIT_USAGE)
        return
    paths = bus._core.options.paths
    watch = BridgeWatch(os.path.dirname(paths.directory), os.path.basename(paths.directory), say)
    watch.look()  # the first look before subscribing: once subscribed, the watch is on
    try:
        for pattern in patterns:
            bus.on(pattern, history=history)(show)
    except CircusEventsError as exc:
        bus.close()
        fail(str(exc), EXIT_USAGE)
        return
    signal.signal(signal.SIGTERM, lambda *_: seen.set())
    topics = {Pattern(pattern).topic for pattern in patterns}
    try:
        if not bus.sync(2):
            say("waiting for the bridge (is it running? circus-events status)", "yellow")
        watch.start()
        while not seen.wait(0.2) and not topics <= bus._core.refused_topics:
            pass
    except KeyboardInterrupt:
        bus.close()
        sys.exit(EXIT_INTERRUPTED)
    finally:
        watch.stop()
    bus.close()
    if gone.is_set():
        quiet_stdout()
        sys.exit(0)
    if not seen.is_set():  # nothing would ever come: every subscription was refused
        fail(
            f"the bridge refused every subscription of this tail: {bus._core.refused}", EXIT_FAILURE
        )


def quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush of what is still
    buffered for a closed pipe would print "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
