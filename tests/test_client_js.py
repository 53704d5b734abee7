"""client.js under node: its glob matcher against the hub's, and its backoff
against a real server that welcomes and then closes with 1013."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import websockets
from conftest import free_port

from circus_events._exceptions import ChannelError
from circus_events.protocol.topics import Pattern

NODE = shutil.which("node")
CLIENT_JS = Path(__file__).parent.parent / "circus_events/static/client.js"
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")
#: Node 20 and 21 have a WebSocket behind this flag (22 and later: always).
WEBSOCKET_FLAG = (
    ["--experimental-websocket"]
    if NODE is not None
    and b"--experimental-websocket"
    in subprocess.run([NODE, "--help"], capture_output=True, check=False).stdout
    else []
)

PATTERNS = [
    "news.*", "*", "a?c", "[a-c]x", "[^a]b", "[z-a]", "a*b*c", "**a", "?*?", "[.]*", "a-b",
    "[^-]", "x[-a]", "é*", "a[b", "a]", "[]x", "[^]", "*[", "a\U0001f600?", "[ab-]*",
]  # fmt: skip
CHANNELS = ["news.a", "news.", "abc", "ac", "bx", "dx", "ab", "bb", "m", "axbyc", "aaa", "a",
            ".x", "-", "x-", "xa", "éa", "a\U0001f600b", "a\U0001f600", "ab-", ""]  # fmt: skip


def run_node(code: str, timeout: float = 10) -> str:
    assert NODE is not None
    try:
        done = subprocess.run(
            [NODE, *WEBSOCKET_FLAG, "-e", f"require({str(CLIENT_JS)!r});\n{code}"],
            capture_output=True, text=True, timeout=timeout, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"node took more than {timeout}s: a matcher that never ends?")
    return done.stdout


def python_matches(pattern: str, channel: str) -> bool:
    try:
        return Pattern(pattern).matches(channel)
    except ChannelError:
        return False  # the hub refuses the pattern: nothing to match


def test_the_js_matcher_agrees_with_the_hubs_patterns() -> None:
    cases = list(itertools.product(PATTERNS, CHANNELS))
    code = (
        f"const cases = {json.dumps(cases)};\n"
        "console.log(JSON.stringify(cases.map(([p, c]) => CircusEvents.matches(p, c))));"
    )
    got = json.loads(run_node(code))
    expected = [python_matches(p, c) for p, c in cases]
    wrong = [(p, c, g) for (p, c), g, e in zip(cases, got, expected, strict=True) if g != e]
    assert not wrong


def test_the_js_matcher_ends_on_broken_and_pathological_patterns() -> None:
    """An unclosed '[' looped forever; runs of '*' must not backtrack exponentially."""
    code = (
        "const m = CircusEvents.matches;\n"
        "const started = Date.now();\n"
        "const results = [m('a[b', 'a'), m('[', '['), m('*'.repeat(30) + 'Z', 'a'.repeat(5000)),\n"
        "  m('*a'.repeat(20) + 'b', 'a'.repeat(4000)), m('*a'.repeat(20), 'a'.repeat(4000))];\n"
        "console.log(JSON.stringify({results, took: Date.now() - started}));"
    )
    answer = json.loads(run_node(code))
    assert answer["results"] == [False, False, False, False, True]
    assert answer["took"] < 2000


def test_the_js_client_backs_off_from_a_server_that_welcomes_then_closes_1013(
    short_tmp: Path,
) -> None:
    """Its attempt counter started over at each welcome: ~25 reconnections a second forever."""
    if "function" not in run_node("console.log(typeof WebSocket)"):
        pytest.skip("this node has no WebSocket")
    script = short_tmp / "backoff.js"
    script.write_text(
        "require(process.argv[2]);\n"
        "new CircusEvents(process.argv[3], {minDelay: 50, maxDelay: 100000});\n"
        "setInterval(() => {}, 1000);\n"
    )
    arrivals: list[float] = []

    async def handler(connection: websockets.ServerConnection) -> None:
        arrivals.append(time.monotonic())
        await connection.send(json.dumps({"type": "welcome", "socket_id": "w#1.x"}))
        await connection.close(1013, "too slow: the send queue overflowed")

    async def scenario() -> None:
        port = free_port()
        assert NODE is not None
        async with websockets.serve(handler, "127.0.0.1", port):
            node = await asyncio.create_subprocess_exec(
                NODE, *WEBSOCKET_FLAG, str(script), str(CLIENT_JS), f"ws://127.0.0.1:{port}/e",
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 20
                while len(arrivals) < 7:
                    assert time.monotonic() < deadline, f"only {len(arrivals)} connections"
                    await asyncio.sleep(0.01)  # polling interval, not synchronisation
            finally:
                node.kill()
                await node.wait()

    asyncio.run(scenario())
    waits = [b - a for a, b in itertools.pairwise(arrivals)]
    # Attempt 5 waits 0.8 to 1.6 s (50 ms doubled 5 times, jittered down to half).
    assert waits[5] > 0.7, waits
