"""The circus plugin: ``[plugin:events]`` with ``use = circus_events.plugin.EventsPlugin``.

circusd runs a plugin as its own process and hands it its section's options
as strings on the command line (visible in ``ps``). So:

* every option is parsed once into a typed config, with errors naming the key;
* a password in ``redis_url`` is refused: the URL with its password comes from
  ``CIRCUS_EVENTS_REDIS_URL`` in circusd's environment, or ``redis_url_file``;
* ``CIRCUS_EVENTS_*`` variables override the matching options;
* the bridge runs in its own ``asyncio.run()`` from ``start()``: the base
  class's tornado loop goes deaf after one exception in a handler and never
  calls ``handle_stop`` on SIGTERM;
* a bad configuration is logged (to circus' logger and to the plugin log
  file) and the plugin then waits idle, rather than crash-looping;
* circus' process events are republished as ``circus.<watcher>.<event>``,
  and reconciled with circusd's ``list`` now and then, since events sent
  before the plugin connected are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

import zmq
import zmq.asyncio
from circus.plugins import CircusPlugin

from ._client.core import BusCore
from ._client.driver import new_epoch
from ._client.options import ClientOptions
from ._config import (
    BridgeConfig,
    NumberSpec,
    default_dir,
    environ_labels,
    environ_options,
    parse_number,
    relabel,
)
from ._exceptions import CircusEventsError, ConfigError
from ._redis_url import read_redis_url_file, refuse_visible_password
from ._sockdir import open_private_file, prepare_dir
from .bridge.core import Bridge
from .bridge.heap import settle_heap

__all__ = ["EventsPlugin", "PluginSettings", "parse_plugin_options"]

log = logging.getLogger("circus_events.plugin")

LOG_FILE_NAME: Final = "events-plugin.log"
#: Seconds between reconciliations with circusd's process list.
DEFAULT_RECONCILE_INTERVAL: Final = 30.0
#: Reconciling asks circusd for every watcher's pids: not more than once a second,
#: and at least once an hour (events circus sent before we listened show up by then).
MIN_RECONCILE_INTERVAL: Final = 1.0
MAX_RECONCILE_INTERVAL: Final = 3600.0
#: The plugin's own numeric options (the bridge's are in ``_config.NUMERIC_OPTIONS``).
PLUGIN_NUMERIC_OPTIONS: Final = {
    "reconcile_interval": NumberSpec(float, MIN_RECONCILE_INTERVAL, MAX_RECONCILE_INTERVAL),
}
CIRCUSD_TIMEOUT: Final = 5.0

#: The bridge options a plugin section may set: every ``BridgeConfig`` field.
_BRIDGE_KEYS: Final = frozenset(field.name for field in dataclasses.fields(BridgeConfig))
_PLUGIN_KEYS: Final = frozenset({"redis_url_file", "reconcile_interval", "log_file"})
#: Keys circus itself puts in (or reads from) a plugin section: not ours to refuse.
_CIRCUS_KEYS: Final = frozenset(
    {
        "__name__", "use", "name", "priority", "singleton", "active", "copy_env", "copy_path",
        "respawn", "max_retry", "graceful_timeout", "autostart", "warmup_delay", "stop_signal",
        "stop_children", "close_child_stdout", "close_child_stderr", "working_dir", "uid",
        "gid", "umask", "on_demand", "virtualenv", "use_papa", "numprocesses",
    }
)  # fmt: skip
_CIRCUS_PREFIXES: Final = ("stdout_stream.", "stderr_stream.", "hooks.", "rlimit_", "env")


class PluginSettings:
    """What the plugin needs beyond the bridge config."""

    def __init__(self, reconcile_interval: float, log_file: str) -> None:
        self.reconcile_interval = reconcile_interval
        self.log_file = log_file


def parse_plugin_options(
    options: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> tuple[BridgeConfig, PluginSettings]:
    """Parse a ``[plugin:events]`` section; raise :class:`ConfigError` naming the key.

    A key set by a ``CIRCUS_EVENTS_*`` variable is named by that variable.
    """
    bridge: dict[str, Any] = {}
    for key, value in options.items():
        if key in _BRIDGE_KEYS:
            bridge[key] = value
        elif key in _PLUGIN_KEYS or key in _CIRCUS_KEYS or key.startswith(_CIRCUS_PREFIXES):
            continue
        else:
            known = ", ".join(sorted(_BRIDGE_KEYS | _PLUGIN_KEYS))
            raise ConfigError(key, f"unknown option in the plugin section (known: {known})")
    if bridge.get("redis_url"):
        refuse_visible_password("redis_url", str(bridge["redis_url"]), file_option="redis_url_file")
    if options.get("redis_url_file"):
        if bridge.get("redis_url"):
            raise ConfigError("redis_url_file", "give either redis_url or redis_url_file, not both")
        bridge["redis_url"] = read_redis_url_file("redis_url_file", options["redis_url_file"])
    labels = {"redis_url": "redis_url_file"} if options.get("redis_url_file") else {}
    env = environ_options(environ)
    env.pop("worker", None)
    bridge.update(env)  # variables override options, as for every part of the bus
    labels.update(environ_labels(environ))
    try:
        config = BridgeConfig.from_options(bridge)
        numbers = {
            key: parse_number(key, options[key], spec)
            for key, spec in PLUGIN_NUMERIC_OPTIONS.items()
            if key in options
        }
    except ConfigError as exc:
        raise relabel(exc, labels) from None
    interval = numbers.get("reconcile_interval", DEFAULT_RECONCILE_INTERVAL)
    log_file = options.get("log_file") or os.path.join(config.dir, LOG_FILE_NAME)
    return config, PluginSettings(interval, log_file)


def _fallback_log_file(options: Mapping[str, str]) -> str:
    """Where to log when the options themselves are broken."""
    if options.get("log_file"):
        return options["log_file"]
    return os.path.join(_fallback_dir(options), LOG_FILE_NAME)


def _fallback_dir(options: Mapping[str, str]) -> str:
    directory = os.environ.get("CIRCUS_EVENTS_DIR") or options.get("dir") or default_dir()
    return os.path.abspath(directory)


class _PrivateLogFile(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on a descriptor we opened and checked; never reopened by path."""

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.flush()
            self.stream.close()
        super().close()


def _log_to_file(path: str, socket_dir: str | None = None) -> None:
    """Log to a file the user can find, as well as to circus' own logger.

    The file is opened without following a link and must be our own plain
    file with one link (``_sockdir.open_private_file``). Its folder, when it
    is the socket folder or does not exist yet, is created or checked as the
    bridge does its own. A file that fails is not used; circus' log says why.
    """
    package = logging.getLogger("circus_events")
    package.setLevel(logging.INFO)
    for handler in logging.getLogger("circus").handlers:
        package.addHandler(handler)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if folder == socket_dir or not os.path.lexists(folder):
            prepare_dir(folder)
        fd = open_private_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, key="log_file")
    except CircusEventsError as exc:
        log.error("[plugin:events] not logging to a file: %s", exc)
        return
    to_file = _PrivateLogFile(os.fdopen(fd, "a", encoding="utf-8"))
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    package.addHandler(to_file)


class CircusWatch:
    """Republishes circusd's process events and reconciles with its process list."""

    def __init__(
        self, bridge: Bridge, endpoint: str, pubsub_endpoint: str, interval: float
    ) -> None:
        self.bridge = bridge
        self.endpoint = endpoint
        self.pubsub_endpoint = pubsub_endpoint
        self.interval = interval
        self.known: dict[str, set[int]] = {}
        options = ClientOptions.resolve(
            dir=bridge.config.dir,
            namespace=bridge.config.namespace,
            host=bridge.config.host,
            worker=f"circusd@{bridge.config.host}",
            max_message_bytes=bridge.config.max_message_bytes,
            environ={},
        )
        self.core = BusCore(options, None, new_epoch())

    def publish(self, watcher: str, event: str, data: dict[str, Any]) -> None:
        channel = f"circus.{watcher}.{event}"
        try:
            frame = self.core.encode(
                channel, {"watcher": watcher, **data}, "cluster", wall=time.time()
            )
        except (CircusEventsError, ValueError) as exc:
            log.warning("cannot republish %s: %s", channel, exc)
            return
        self.bridge.inject(frame)

    async def run(self) -> None:
        context = zmq.asyncio.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"watcher.")
        sub.connect(self.pubsub_endpoint)
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IDENTITY, uuid.uuid4().hex.encode())
        dealer.connect(self.endpoint)
        reconciler = asyncio.create_task(self._reconcile_forever(dealer))
        try:
            while True:
                parts = await sub.recv_multipart()
                self._on_circus_event(parts)
        finally:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
            sub.close()
            dealer.close()
            context.term()

    def _on_circus_event(self, parts: list[bytes]) -> None:
        if len(parts) != 2:
            return
        try:
            _, watcher, event = parts[0].decode().split(".", 2)
            message = json.loads(parts[1])
        except (ValueError, RecursionError):
            log.debug("ignored a circus event: %r", parts[:1])
            return
        if watcher.startswith("plugin:") or not isinstance(message, dict):
            return
        pid = message.get("process_pid") or message.get("pid")
        data = {k: v for k, v in message.items() if k in ("exit_code", "time")}
        if isinstance(pid, int):
            data["pid"] = pid
            pids = self.known.setdefault(watcher, set())
            if event == "spawn":
                pids.add(pid)
            elif event == "reap":
                pids.discard(pid)
        self.publish(watcher, event, data)

    async def _reconcile_forever(self, dealer: zmq.asyncio.Socket) -> None:
        while True:
            try:
                await self._reconcile(dealer)
            except (TimeoutError, zmq.ZMQError, ValueError, KeyError) as exc:
                log.warning("could not reconcile with circusd at %s: %s", self.endpoint, exc)
            await asyncio.sleep(self.interval)

    async def _call(self, dealer: zmq.asyncio.Socket, command: str, **props: Any) -> Any:
        call_id = uuid.uuid4().hex
        await dealer.send(
            json.dumps({"id": call_id, "command": command, "properties": props}).encode()
        )
        deadline = time.monotonic() + CIRCUSD_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"circusd did not answer {command!r}")
            reply = json.loads(await asyncio.wait_for(dealer.recv(), remaining))
            if reply.get("id") == call_id:
                return reply

    async def _reconcile(self, dealer: zmq.asyncio.Socket) -> None:
        """Publish what the event stream missed (spawns and reaps) as such."""
        watchers = (await self._call(dealer, "list"))["watchers"]
        for watcher in watchers:
            if watcher.startswith("plugin:"):
                continue
            reply = await self._call(dealer, "list", name=watcher)
            current = set(reply.get("pids", []))
            known = self.known.setdefault(watcher, set())
            for pid in sorted(current - known):
                self.publish(watcher, "spawn", {"pid": pid, "reconciled": True})
            for pid in sorted(known - current):
                self.publish(watcher, "reap", {"pid": pid, "reconciled": True})
            self.known[watcher] = current


class EventsPlugin(CircusPlugin):  # type: ignore[misc]
    """The circus-events bridge as a circus plugin."""

    name = "events"

    def __init__(
        self,
        endpoint: str,
        pubsub_endpoint: str,
        check_delay: float,
        ssh_server: str | None = None,
        **config: str,
    ) -> None:
        super().__init__(endpoint, pubsub_endpoint, check_delay, ssh_server=ssh_server, **config)
        self.options = {k: str(v) for k, v in config.items()}
        self._stopped = False

    def start(self) -> None:
        """Run the bridge in our own event loop until SIGTERM (replaces tornado)."""
        try:
            config, settings = parse_plugin_options(self.options)
        except ConfigError as exc:
            _log_to_file(_fallback_log_file(self.options), _fallback_dir(self.options))
            log.error(
                "[plugin:events] configuration error: %s. Fix the plugin section, then "
                "`circusctl restart %s`. The bus is not running.",
                exc,
                self.options.get("name", "plugin:events"),
            )
            self._wait_for_stop()
            return
        _log_to_file(settings.log_file, config.dir)
        settle_heap()
        asyncio.run(self._serve(config, settings))

    async def _serve(self, config: BridgeConfig, settings: PluginSettings) -> None:
        bridge = Bridge(config)
        serving = asyncio.create_task(bridge.run())
        ready = asyncio.create_task(bridge.ready.wait())
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():  # failed to start: say why, where the user looks
            try:
                serving.result()
            except CircusEventsError as exc:
                log.error("the events bridge cannot start: %s", exc)
            ready.cancel()
            return
        watch = CircusWatch(
            bridge, self.endpoint, self.pubsub_endpoint, settings.reconcile_interval
        )
        watching = asyncio.create_task(watch.run())
        try:
            await serving
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    def _wait_for_stop(self) -> None:
        """Idle until circus stops us, instead of a restart loop that logs nothing new."""
        stop = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop:
            signal.pause()

    def stop(self) -> None:
        """Called by circus' plugin runner after ``start`` returns: nothing left to do."""
        if not self._stopped:
            self._stopped = True
            with contextlib.suppress(Exception):
                self.loop.close()

    def handle_recv(self, data: Any) -> None:  # pragma: no cover - tornado path unused
        pass
