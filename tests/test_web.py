"""``circus-events web`` in a real headless Chromium: the page shows an event published
on the other host within 1 s, read from the DOM (DevTools protocol), not a screenshot."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_websocket_example
from conftest import BridgeProcess, RedisServer, free_port, wait_until
from test_websocket_example import ExampleHost
from websockets.sync.client import ClientConnection, connect

from circus_events import Bus

#: Two hosts running examples/websocket under circus (the example's own fixture).
example_hosts = test_websocket_example.example_hosts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Where an event published on the other host must show up on the page.
SHOW_WITHIN = 1.0


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}",
                "--window-size=1200,850", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        target = wait_until(self._page_target, 30, "chromium's DevTools endpoint")
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(target, max_size=None))
        self._ids = itertools.count(1)

    def _page_target(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=1) as r:
                targets = json.loads(r.read())
        except OSError:
            return None
        pages = [t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"]
        return pages[0] if pages else None

    def call(self, method: str, **params: Any) -> Any:
        number = next(self._ids)
        self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._stack.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def browser(short_tmp: Path) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it", pytrace=False)
    opened = Browser(short_tmp / "chromium-profile")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def web_page(
    redis_server: RedisServer, bridge_factory: Callable[..., BridgeProcess]
) -> Iterator[tuple[str, dict[str, BridgeProcess]]]:
    """Two hosts; ``circus-events web`` on host B."""
    bridges = {h: bridge_factory(h, redis_url=redis_server.url) for h in ("host-a", "host-b")}
    port = free_port()
    env = {**os.environ, "CIRCUS_EVENTS_REDIS_URL": redis_server.url}
    web = subprocess.Popen(
        [sys.executable, "-m", "circus_events", "web", "--port", str(port),
         "--dir", str(bridges["host-b"].directory), "--host", "host-b"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert web.stdout is not None
        line = web.stdout.readline().decode().strip()
        assert line == f"http://127.0.0.1:{port}/", web.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        yield line, bridges
    finally:
        web.terminate()
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait(10)
        for stream in (web.stdout, web.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.timeout(120)
def test_live_page_shows_hosts_and_an_event_from_the_other_host_within_a_second(
    browser: Browser, web_page: tuple[str, dict[str, BridgeProcess]]
) -> None:
    url, bridges = web_page
    browser.call("Page.navigate", url=url)
    wait_until(
        lambda: browser.evaluate("document.getElementById('state').textContent") == "live",
        20,
        "the page to connect",
    )
    hosts = "document.getElementById('hosts').textContent"
    wait_until(
        lambda: all(h in (browser.evaluate(hosts) or "") for h in ("host-a", "host-b")),
        30,
        "both hosts on the page",
    )
    tail = "document.getElementById('tail').textContent"
    with Bus(dir=str(bridges["host-a"].directory), worker="host-a/app", host="host-a") as bus:
        # Probe until the page's subscription is live through Redis, then time one event.
        deadline = time.monotonic() + 30
        while "probe-seen" not in (browser.evaluate(tail) or ""):
            assert time.monotonic() < deadline, "no event ever reached the page"
            bus.publish("orders.probe", {"mark": "probe-seen"})
            time.sleep(0.1)  # probing rate, not synchronisation
        marker = f"paid-{time.time_ns()}"
        sent = time.monotonic()
        bus.publish("orders.paid", {"mark": marker, "amount": 42})
        wait_until(lambda: marker in (browser.evaluate(tail) or ""), 5, "the event on the page")
        took = time.monotonic() - sent
    assert took < SHOW_WITHIN, f"the event took {took:.3f}s to show"
    line = browser.evaluate(
        f"[...document.querySelectorAll('#tail .line')].map(e => e.textContent)"
        f".find(t => t.includes({json.dumps(marker)}))"
    )
    assert "host-a" in line and "orders.paid" in line
    # The filter hides what does not match.
    browser.evaluate("document.getElementById('filter').value = 'nothing-matches-this'")
    with Bus(dir=str(bridges["host-a"].directory), worker="host-a/app2", host="host-a") as bus:
        bus.publish("orders.paid", {"mark": "hidden-one"})
        bus.publish("orders.paid", {"mark": "nothing-matches-this"})
        assert bus.flush()
    wait_until(lambda: "nothing-matches-this" in browser.evaluate(tail), 5, "the filtered event")
    assert "hidden-one" not in browser.evaluate(tail)
    wait_until(
        lambda: "host-a" in (browser.evaluate("document.getElementById('host-rates').textContent")),
        5,
        "the per-host rates",
    )
    shot = os.environ.get("LIVE_PAGE_SCREENSHOT")
    if shot:  # how docs/live-page.png is made: some traffic from both hosts first
        browser.evaluate("document.getElementById('filter').value = ''")
        channels = ["orders.paid", "orders.shipped", "cache.clear", "chat.room1"]
        with (
            Bus(dir=str(bridges["host-a"].directory), worker="host-a/web-1", host="host-a") as a,
            Bus(dir=str(bridges["host-b"].directory), worker="host-b/web-3", host="host-b") as b,
        ):
            for n in range(300):
                (a if n % 3 else b).publish(channels[n % 4 if n % 5 else 0], {"n": n})
                time.sleep(0.01)  # a steady rate for the rate tables
        browser.screenshot(Path(shot))


@pytest.mark.timeout(180)
def test_example_page_shows_news_from_the_other_host_within_a_second(
    browser: Browser, example_hosts: list[ExampleHost]
) -> None:
    """examples/websocket under circus on two hosts: the page served by host B's app
    shows news published on host A within 1 s, read from its DOM."""
    a, b = example_hosts
    browser.call("Page.navigate", url=f"http://127.0.0.1:{b.port}/?token=alice")
    wait_until(
        lambda: "#" in (browser.evaluate("document.getElementById('sid').textContent") or ""),
        30,
        "the example page's socket",
    )
    log = "document.getElementById('log').textContent"
    with Bus(dir=str(a.sockets), worker="host-a/newsroom", host="host-a") as bus:
        deadline = time.monotonic() + 30
        while "probe-seen" not in (browser.evaluate(log) or ""):
            assert time.monotonic() < deadline, "no news ever reached the example page"
            bus.publish("news.probe", {"mark": "probe-seen"})
            time.sleep(0.1)  # probing rate, not synchronisation
        marker = f"flash-{time.time_ns()}"
        sent = time.monotonic()
        bus.publish("news.flash", {"mark": marker})
        wait_until(lambda: marker in (browser.evaluate(log) or ""), 5, "the news on the page")
        took = time.monotonic() - sent
    assert took < SHOW_WITHIN, f"the news took {took:.3f}s to show"
    line = browser.evaluate(
        f"[...document.querySelectorAll('#log li')].map(e => e.textContent)"
        f".find(t => t.includes({json.dumps(marker)}))"
    )
    assert line.startswith("host-a host-a/newsroom news.flash")
