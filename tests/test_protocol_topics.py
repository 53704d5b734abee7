"""Channel names, worker ids, subscription topics and Redis-style glob patterns."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circus_events._exceptions import ChannelError
from circus_events.protocol.topics import (
    INBOX_PREFIX,
    MAX_CHANNEL_BYTES,
    MAX_WORKER_ID_BYTES,
    Pattern,
    SubscriptionTopic,
    channel_topic,
    inbox_channel,
    inbox_topic,
    parse_subscription_topic,
    validate_channel,
    validate_worker_id,
)

# ---------------------------------------------------------------------------
# validate_channel
# ---------------------------------------------------------------------------

GOOD_CHANNELS = [
    "orders.paid",
    "a",
    "orders-paid_1:2/3 with spaces",
    "x" * MAX_CHANNEL_BYTES,  # at the limit
    "é" * (MAX_CHANNEL_BYTES // 2),  # the limit is in bytes: 100 x 2 bytes
    "déjà.vu",
    "a@b",  # '@' is only reserved at the start
    "\x80\u2028",  # C1 controls and separators are not forbidden
]


@pytest.mark.parametrize("channel", GOOD_CHANNELS)
def test_validate_channel_accepts(channel: str) -> None:
    assert validate_channel(channel) == channel.encode("utf-8")


# (value, fragment of the error message)
BAD_CHANNELS: list[tuple[Any, str]] = [
    ("", "must not be empty"),
    ("x" * (MAX_CHANNEL_BYTES + 1), "the limit is 200"),
    ("é" * (MAX_CHANNEL_BYTES // 2) + "x", "201 bytes long"),
    ("a\x00b", "forbidden character '\\x00'"),
    ("a\nb", "forbidden character '\\n'"),
    ("a\tb", "forbidden character"),
    ("a\x1fb", "forbidden character"),
    ("a\x7fb", "forbidden character '\\x7f'"),
    ("a\\b", "forbidden character"),
    ("a]b", "forbidden character ']'"),
    ("orders.*", "glob character"),
    ("orders.?", "glob character"),
    ("orders.[ab", "glob character"),
    ("@w:worker", "reserved"),
    ("@", "reserved"),
    ("\ud800", "not valid Unicode"),  # a lone surrogate cannot be UTF-8
    (b"orders", "must be a str, not bytes"),
    (None, "must be a str, not NoneType"),
    (42, "must be a str, not int"),
]


@pytest.mark.parametrize(("channel", "message"), BAD_CHANNELS)
def test_validate_channel_refuses(channel: Any, message: str) -> None:
    with pytest.raises(ChannelError) as info:
        validate_channel(channel)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_validate_channel_allows_system_names_when_asked() -> None:
    assert validate_channel("@w:worker-1", allow_system=True) == b"@w:worker-1"
    with pytest.raises(ChannelError, match="glob"):
        validate_channel("@w:*", allow_system=True)


# ---------------------------------------------------------------------------
# validate_worker_id
# ---------------------------------------------------------------------------

GOOD_WORKERS = [
    "worker-1",
    "web.3 (pid 1234)",
    "@w",
    "a]b\\c*?[",  # any printable text, glob characters included
    "x" * MAX_WORKER_ID_BYTES,
    "ü" * (MAX_WORKER_ID_BYTES // 2),
]


@pytest.mark.parametrize("worker", GOOD_WORKERS)
def test_validate_worker_id_accepts(worker: str) -> None:
    assert validate_worker_id(worker) == worker.encode("utf-8")


BAD_WORKERS: list[tuple[Any, str]] = [
    ("", "must not be empty"),
    ("x" * (MAX_WORKER_ID_BYTES + 1), "the limit is 200"),
    ("w\x00", "forbidden character"),
    ("w\r\n", "forbidden character"),
    ("w\x7f", "forbidden character"),
    ("\udc80", "not valid Unicode"),
    (7, "worker id must be a str, not int"),
    (b"w", "worker id must be a str, not bytes"),
]


@pytest.mark.parametrize(("worker", "message"), BAD_WORKERS)
def test_validate_worker_id_refuses(worker: Any, message: str) -> None:
    with pytest.raises(ChannelError) as info:
        validate_worker_id(worker)
    assert message in str(info.value)


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------


def test_channel_and_inbox_topics() -> None:
    assert channel_topic("orders.paid") == b"orders.paid\0"
    assert channel_topic("é") == b"\xc3\xa9\0"
    assert inbox_channel("w1") == "@w:w1"
    assert inbox_topic("w1") == b"@w:w1\0"
    assert inbox_channel("w1").startswith(INBOX_PREFIX)


# (raw topic, name, exact, worker)
SUBSCRIPTION_TOPICS: list[tuple[bytes, str, bool, str | None]] = [
    (b"orders.paid\0", "orders.paid", True, None),
    (b"orders.", "orders.", False, None),
    (b"", "", False, None),  # the prefix of "*": everything
    (b"\0", "", True, None),
    (b"@w:web.1\0", "@w:web.1", True, "web.1"),
    (b"@w:web.1", "@w:web.1", False, None),  # a prefix is never an inbox
    (b"\xc3\xa9\0", "é", True, None),
    (b"x" * 403, "x" * 403, False, None),  # channel + inbox prefix + worker id
]


@pytest.mark.parametrize(("raw", "name", "exact", "worker"), SUBSCRIPTION_TOPICS)
def test_parse_subscription_topic(raw: bytes, name: str, exact: bool, worker: str | None) -> None:
    topic = parse_subscription_topic(raw)
    assert topic == SubscriptionTopic(name, exact)
    assert topic.worker == worker


BAD_SUBSCRIPTION_TOPICS: list[tuple[bytes, str]] = [
    (b"a\0b", "NUL inside"),
    (b"a\0b\0", "NUL inside"),
    (b"\0\0", "NUL inside"),
    (b"\xff\0", "not UTF-8"),
    (b"\xc3", "not UTF-8"),
    (b"x" * 404, "too long"),
    (b"x" * 404 + b"\0", "too long"),
    (b"@w:a\x01b\0", "worker id"),
    (b"@w:\0", "worker id"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_SUBSCRIPTION_TOPICS)
def test_parse_subscription_topic_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(ChannelError, match=message):
        parse_subscription_topic(raw)


@given(st.sampled_from(GOOD_CHANNELS))
def test_channel_topic_parses_back_as_exact(channel: str) -> None:
    assert parse_subscription_topic(channel_topic(channel)) == (channel, True)


# ---------------------------------------------------------------------------
# Pattern: table
# ---------------------------------------------------------------------------

# (pattern, exact, prefix, topic, matching channels, other channels)
PATTERNS: list[tuple[str, bool, str, bytes, list[str], list[str]]] = [
    (
        "orders.paid",
        True,
        "orders.paid",
        b"orders.paid\0",
        ["orders.paid"],
        ["orders.paid.eu", "orders.pai", "orders_paid", ""],
    ),
    (
        "orders.*",
        False,
        "orders.",
        b"orders.",
        ["orders.", "orders.paid", "orders.eu.paid", "orders.\n"],
        ["orders", "order.paid", "xorders.paid"],
    ),
    ("*", False, "", b"", ["", "a", "a.b.c", "@w:w1"], []),
    ("*.paid", False, "", b"", [".paid", "a.b.paid"], ["paid", "a.paid.x"]),
    ("a?c", False, "a", b"a", ["abc", "a.c", "aéc"], ["ac", "abbc", "abcd"]),
    ("a[bc]d", False, "a", b"a", ["abd", "acd"], ["ad", "aad", "abcd"]),
    ("a[^bc]d", False, "a", b"a", ["aad", "a.d", "aéd"], ["abd", "acd", "ad"]),
    ("[a-c]", False, "", b"", ["a", "b", "c"], ["d", "-", "", "ab"]),
    ("[c-a]", False, "", b"", ["a", "b", "c"], ["d"]),  # Redis swaps a reversed range
    ("[-a]", False, "", b"", ["-", "a"], ["b"]),  # a leading '-' is literal
    ("[a-]", False, "", b"", ["-", "a"], ["b", "]"]),  # a trailing '-' is literal (*)
    ("[a-c-e]", False, "", b"", ["a", "b", "c", "-", "e"], ["d"]),
    ("[^^]", False, "", b"", ["a"], ["^"]),
    ("[a^]", False, "", b"", ["a", "^"], ["b"]),
    ("[[]", False, "", b"", ["["], ["]", "a"]),
    ("[*?.]", False, "", b"", ["*", "?", "."], ["a", ""]),
    ("a.b*c?", False, "a.b", b"a.b", ["a.bcd", "a.bxxcy"], ["a.bc", "a.b"]),
    ("é*", False, "é", "é".encode(), ["é", "éa"], ["e"]),
    ("**", False, "", b"", ["", "abc"], []),
]
# (*) Real Redis reads ``[a-]`` as a range from 'a' to ']' followed by an
# unterminated class; the Pattern reads it as POSIX globs do. Both accept "a".


@pytest.mark.parametrize(("text", "exact", "prefix", "topic", "good", "bad"), PATTERNS)
def test_pattern(
    text: str, exact: bool, prefix: str, topic: bytes, good: list[str], bad: list[str]
) -> None:
    pattern = Pattern(text)
    assert pattern.text == text
    assert pattern.exact is exact
    assert pattern.prefix == prefix
    assert pattern.topic == topic
    for channel in good:
        assert pattern.matches(channel), channel
        # ZeroMQ's prefix filter must let through everything the pattern matches.
        assert channel_topic(channel).startswith(pattern.topic)
    for channel in bad:
        assert not pattern.matches(channel), channel


BAD_PATTERNS: list[tuple[Any, str]] = [
    ("", "must not be empty"),
    (None, "pattern must be a str, not NoneType"),
    (b"orders.*", "pattern must be a str, not bytes"),
    ("x" * (MAX_CHANNEL_BYTES + 1), "the limit is 200"),
    ("a\x00*", "forbidden character"),
    ("a\\*", "forbidden character"),  # no escapes: they could not be sent as a prefix
    ("@w:*", "reserved"),
    ("@*", "reserved"),
    ("a[b", "without its ']'"),
    ("[", "without its ']'"),
    ("a[^", "without its ']'"),
    ("a]", "without its '['"),
    ("]", "without its '['"),
    ("a*]", "without its '['"),
    ("[a]]", "without its '['"),
    ("[]", "empty character class"),
    ("a[^]", "empty character class"),
    ("[]]", "empty character class"),
]


@pytest.mark.parametrize(("text", "message"), BAD_PATTERNS)
def test_pattern_refuses(text: Any, message: str) -> None:
    with pytest.raises(ChannelError) as info:
        Pattern(text)
    assert message in str(info.value)


def test_pattern_at_the_length_limit() -> None:
    assert Pattern("x" * (MAX_CHANNEL_BYTES - 1) + "*").matches("x" * 250)
    assert Pattern("x" * MAX_CHANNEL_BYTES).exact


def test_pattern_value_semantics() -> None:
    a, b, c = Pattern("orders.*"), Pattern("orders.*"), Pattern("orders.?")
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != "orders.*"
    assert len({a, b, c}) == 2
    assert repr(a) == "Pattern('orders.*')"


# ---------------------------------------------------------------------------
# Pattern: property test against a reference Redis glob matcher
# ---------------------------------------------------------------------------


@functools.cache
def redis_glob(pattern: str, string: str) -> bool:
    """A character-by-character port of Redis ``stringmatchlen`` (no escapes, no nocase).

    Redis matches bytes; the Pattern matches decoded text, so this works on
    characters. Unterminated classes never reach it (the Pattern refuses them).
    """
    if not pattern:
        return not string
    head = pattern[0]
    if head == "*":
        rest = pattern.lstrip("*")
        if not rest:
            return True
        return any(redis_glob(rest, string[i:]) for i in range(len(string) + 1))
    if not string:
        return False
    if head == "?":
        return redis_glob(pattern[1:], string[1:])
    if head == "[":
        i = 1
        negate = pattern[i] == "^"
        if negate:
            i += 1
        matched = False
        while True:
            assert i < len(pattern), "unterminated class"
            if pattern[i] == "]":
                break
            if len(pattern) - i >= 3 and pattern[i + 1] == "-":
                lo, hi = sorted((pattern[i], pattern[i + 2]))
                matched = matched or lo <= string[0] <= hi
                i += 2
            else:
                matched = matched or pattern[i] == string[0]
            i += 1
        if matched == negate:
            return False
        return redis_glob(pattern[i + 1 :], string[1:])
    return head == string[0] and redis_glob(pattern[1:], string[1:])


# A small alphabet so that random channels often match random patterns.
ALPHABET = "ab.-^é"
CLASS_CHARS = ALPHABET + "*?["


@st.composite
def class_bodies(draw: st.DrawFn) -> str:
    body = draw(st.text(CLASS_CHARS, min_size=1, max_size=4))
    if body.startswith("^"):  # negation is drawn below
        body = "a" + body[1:]
    # Redis would read a '-' just before ']' as a range ending in ']' (see the
    # table above): keep to classes whose reading Redis and POSIX agree on.
    if len(body) >= 2 and body.endswith("-"):
        body = body[:-1] + "a"
    negate = draw(st.booleans())
    return ("^" if negate else "") + body


@st.composite
def pattern_pieces(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A pattern as pieces, each (glob text, one channel fragment it matches)."""
    pieces: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["literal", "literal", "star", "any", "class"]))
        if kind == "literal":
            c = draw(st.sampled_from(ALPHABET))
            pieces.append((c, c))
        elif kind == "star":
            pieces.append(("*", draw(st.text(ALPHABET, max_size=3))))
        elif kind == "any":
            pieces.append(("?", draw(st.sampled_from(ALPHABET))))
        else:
            body = draw(class_bodies())
            pieces.append((f"[{body}]", draw(st.sampled_from(CLASS_CHARS + "]"))))
    return pieces


@settings(max_examples=400, deadline=None)
@given(pattern_pieces(), st.text(ALPHABET + "*?[]", max_size=8), st.booleans())
def test_pattern_agrees_with_redis(pieces: list[tuple[str, str]], other: str, near: bool) -> None:
    text = "".join(glob for glob, _ in pieces)
    pattern = Pattern(text)
    # Half the time a channel built to (nearly) match, half the time any text.
    channel = "".join(fragment for _, fragment in pieces) if near else other
    for candidate in (channel, other, text):
        expected = redis_glob(text, candidate)
        assert pattern.matches(candidate) is expected, (text, candidate)
        if expected:
            assert channel_topic(candidate).startswith(pattern.topic)
    first_glob = min((i for i, c in enumerate(text) if c in "*?["), default=len(text))
    literal = text[:first_glob]
    assert pattern.prefix == literal
    assert pattern.exact is (literal == text)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("text", "channel", "expected"),
    [
        ("*" * 150 + "Z", "x" * 190, False),  # 12 stars took 8 s with a backtracking regex
        ("*a" * 90 + "b", "a" * 190, False),
        ("*a" * 90 + "b", "a" * 100 + "b", True),
        ("*a" * 90 + "*b", "a" * 100 + "b", True),
        ("*?" * 60 + "Z", "x" * 190, False),
        ("a*[bc]?*[bc]?*" * 10 + "Z", "ab." * 60, False),
    ],
    ids=lambda value: str(value)[:12],
)
def test_hostile_patterns_match_in_linear_time(text: str, channel: str, expected: bool) -> None:
    """Anyone picks patterns (a worker, a browser through the hub): no backtracking blow-up."""
    pattern = Pattern(text)
    for _ in range(100):
        assert pattern.matches(channel) is expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["*", "a", "b", "?", "[ab]"]), min_size=1, max_size=12),
    st.text("ab", max_size=10),
)
def test_runs_of_stars_and_stretches_agree_with_redis(pieces: list[str], channel: str) -> None:
    text = "".join(pieces)
    assert Pattern(text).matches(channel) is redis_glob(text, channel), (text, channel)


def test_leadership_changes_are_the_one_system_channel_a_worker_may_subscribe_to() -> None:
    assert Pattern("@leader.billing").exact
    assert Pattern("@leader.*").matches("@leader.billing")
    with pytest.raises(ChannelError):
        Pattern("@leaders")
