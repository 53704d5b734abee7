"""Payload codecs: JSON (orjson or the stdlib), msgpack and raw bytes."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circus_events._exceptions import DecodeError, EncodeError
from circus_events.protocol import codec
from circus_events.protocol.codec import Codec, decode_payload, encode_payload, parse_codec

# ---------------------------------------------------------------------------
# JSON backends: orjson when installed, else the stdlib
# ---------------------------------------------------------------------------


@functools.cache
def _codec_without_orjson() -> ModuleType:
    """A private copy of the codec module imported as if orjson were absent."""
    spec = importlib.util.spec_from_file_location(
        "circus_events.protocol._codec_without_orjson", codec.__file__
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(sys.modules, {"orjson": None}):
        spec.loader.exec_module(module)
    return module


@contextmanager
def json_backend(name: str) -> Iterator[None]:
    if name == "orjson":
        assert codec._json_dumps is not codec._json_dumps_stdlib  # the dev extra is installed
        yield
        return
    fallback = _codec_without_orjson()
    with mock.patch.multiple(
        codec,
        _json_dumps=fallback._json_dumps,
        _json_loads=fallback._json_loads,
        _JSON_ERRORS=fallback._JSON_ERRORS,
    ):
        yield


BACKENDS = ["orjson", "stdlib"]


def _nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def test_fallback_uses_the_stdlib() -> None:
    fallback = _codec_without_orjson()
    assert fallback._json_dumps is fallback._json_dumps_stdlib
    assert fallback._json_loads.__module__ == "json"


# ---------------------------------------------------------------------------
# Codec ids and names
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("member", "wire"), [(Codec.RAW, 0), (Codec.JSON, 1), (Codec.MSGPACK, 2)])
def test_codec_ids_are_wire_values(member: Codec, wire: int) -> None:
    assert member == wire
    assert Codec(wire) is member


PARSE_CODEC: list[tuple[Any, Codec]] = [
    ("json", Codec.JSON),
    ("JSON", Codec.JSON),
    ("Json", Codec.JSON),
    ("raw", Codec.RAW),
    ("msgpack", Codec.MSGPACK),
    ("MsgPack", Codec.MSGPACK),
    (Codec.RAW, Codec.RAW),
    (Codec.MSGPACK, Codec.MSGPACK),
]


@pytest.mark.parametrize(("name", "expected"), PARSE_CODEC)
def test_parse_codec(name: Any, expected: Codec) -> None:
    assert parse_codec(name) is expected


@pytest.mark.parametrize("name", ["yaml", "", " json", "1", 1, None, "pickle"])
def test_parse_codec_refuses(name: Any) -> None:
    with pytest.raises(ValueError, match=r"unknown codec .*: choose json, msgpack or raw"):
        parse_codec(name)


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------

JSON_ENCODED: list[tuple[Any, bytes]] = [
    ({"a": 1}, b'{"a":1}'),
    ([1, 2.5, None, True, False], b"[1,2.5,null,true,false]"),
    ((1, "x"), b'[1,"x"]'),
    ("é", '"é"'.encode()),
    ("", b'""'),
    (0, b"0"),
    ({"k": [{"n": {}}]}, b'{"k":[{"n":{}}]}'),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("data", "encoded"), JSON_ENCODED)
def test_json_encode(backend: str, data: Any, encoded: bytes) -> None:
    with json_backend(backend):
        assert encode_payload(Codec.JSON, data) == encoded
        assert decode_payload(Codec.JSON, encoded) == (list(data) if type(data) is tuple else data)


JSON_UNENCODABLE: list[Any] = [
    object(),
    {1, 2},
    b"bytes",
    {"a": object()},
    [1, 2, 3j],
    "\ud800",  # a lone surrogate cannot be UTF-8
    _nested(100_000),  # both backends have a depth limit
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data", JSON_UNENCODABLE, ids=lambda d: type(d).__name__)
def test_json_encode_error(backend: str, data: Any) -> None:
    with json_backend(backend), pytest.raises(EncodeError, match="as JSON") as info:
        encode_payload(Codec.JSON, data)
    assert isinstance(info.value, ValueError)
    assert info.value.__cause__ is not None


NOT_FINITE: list[Any] = [
    float("nan"),
    float("inf"),
    {"a": None, "b": [1.0, -float("inf")]},
    (None, {"x": float("nan")}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data", NOT_FINITE, ids=repr)
def test_json_refuses_nan_and_infinity_with_either_backend(backend: str, data: Any) -> None:
    """orjson would write them as null: the message would arrive changed."""
    with json_backend(backend), pytest.raises(EncodeError, match=r"NaN or Infinity|as JSON"):
        encode_payload(Codec.JSON, data)


def test_json_null_without_nan_is_still_encoded() -> None:
    data = {"a": None, "b": [1.5, None, "null"], "c": (None, 2)}
    assert encode_payload(Codec.JSON, data) == b'{"a":null,"b":[1.5,null,"null"],"c":[null,2]}'


JSON_UNDECODABLE: list[bytes] = [
    b"",
    b"{",
    b"[1,]",
    b"\xff",
    b'"\xff"',
    b'{"a":1} x',
    b"undefined",
    b"[" * 100_000,  # deep nesting: RecursionError in the stdlib decoder
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("payload", JSON_UNDECODABLE, ids=lambda p: repr(p[:12]))
def test_json_decode_error(backend: str, payload: bytes) -> None:
    with json_backend(backend), pytest.raises(DecodeError, match="not valid JSON"):
        decode_payload(Codec.JSON, payload)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=200, deadline=None)
@given(data=json_values)
def test_json_round_trip(backend: str, data: Any) -> None:
    with json_backend(backend):
        assert decode_payload(Codec.JSON, encode_payload(Codec.JSON, data)) == data


# ---------------------------------------------------------------------------
# raw
# ---------------------------------------------------------------------------

RAW: list[tuple[Any, bytes]] = [
    (b"bytes", b"bytes"),
    (b"", b""),
    (b"\x00\xff", b"\x00\xff"),
    (bytearray(b"array"), b"array"),
    (memoryview(b"xview")[1:], b"view"),
    ("é", b"\xc3\xa9"),
    ("", b""),
]


@pytest.mark.parametrize(("data", "encoded"), RAW)
def test_raw_encode(data: Any, encoded: bytes) -> None:
    out = encode_payload(Codec.RAW, data)
    assert type(out) is bytes
    assert out == encoded
    assert decode_payload(Codec.RAW, out) is out


@pytest.mark.parametrize("data", [1, None, 1.5, [b"x"], {"a": 1}, object()])
def test_raw_encode_error(data: Any) -> None:
    with pytest.raises(EncodeError, match="raw codec takes bytes or str, not"):
        encode_payload(Codec.RAW, data)


# ---------------------------------------------------------------------------
# msgpack
# ---------------------------------------------------------------------------

MSGPACK: list[tuple[Any, Any]] = [
    ({"a": [1, 2]}, {"a": [1, 2]}),
    (b"bytes", b"bytes"),
    ("é", "é"),
    (None, None),
    (1.5, 1.5),
    (-1, -1),
    (2**64 - 1, 2**64 - 1),
    (-(2**63), -(2**63)),
    ((1, (2, b"x")), [1, [2, b"x"]]),  # arrays come back as lists
    ({}, {}),
    ({"k": {"n": [True, False]}}, {"k": {"n": [True, False]}}),
]


@pytest.mark.parametrize(("data", "decoded"), MSGPACK)
def test_msgpack_round_trip(data: Any, decoded: Any) -> None:
    encoded = encode_payload(Codec.MSGPACK, data)
    assert type(encoded) is bytes
    assert decode_payload(Codec.MSGPACK, encoded) == decoded


@pytest.mark.parametrize(
    "data",
    [object(), {1, 2}, 2**64, -(2**63) - 1, _nested(10_000)],
    ids=["object", "set", "2**64", "-2**63-1", "nested"],
)
def test_msgpack_encode_error(data: Any) -> None:
    with pytest.raises(EncodeError, match="as msgpack") as info:
        encode_payload(Codec.MSGPACK, data)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no data
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # extra data after one value
        b"\xa2\xff\xfe",  # a str that is not UTF-8
        b"\x91" * 10_000,  # deeper than the unpacker allows
    ],
)
def test_msgpack_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid msgpack"):
        decode_payload(Codec.MSGPACK, payload)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(st.characters(codec="utf-8"))
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(msgpack_values)
def test_msgpack_round_trip_property(data: Any) -> None:
    assert decode_payload(Codec.MSGPACK, encode_payload(Codec.MSGPACK, data)) == data


def test_msgpack_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(EncodeError, match=r"pip install 'circus-events\[msgpack\]'"):
        parse_codec("msgpack")
    with pytest.raises(EncodeError, match="needs the msgpack package"):
        encode_payload(Codec.MSGPACK, {"a": 1})
    with pytest.raises(DecodeError, match="needs the msgpack package"):
        decode_payload(Codec.MSGPACK, b"\x80")
    # The other codecs do not need it.
    assert parse_codec("json") is Codec.JSON
    assert decode_payload(Codec.RAW, b"x") == b"x"


# ---------------------------------------------------------------------------
# Codec ids from the wire
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "payload", "data"), [(0, b"x", b"x"), (1, b"[1]", [1])])
def test_decode_takes_plain_ints(wire: int, payload: bytes, data: Any) -> None:
    assert decode_payload(wire, payload) == data


@pytest.mark.parametrize("wire", [3, 255, -1])
def test_decode_unknown_codec(wire: int) -> None:
    with pytest.raises(DecodeError, match=f"unknown codec id {wire}"):
        decode_payload(wire, b"x")
