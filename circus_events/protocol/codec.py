"""Payload codecs: how ``data`` becomes the opaque bytes a message carries.

The codec is chosen per bus and recorded in every header, so a receiver
decodes with the sender's codec and buses with different codecs interoperate.
The bridge never decodes payloads.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable
from typing import Any, Final

from .._exceptions import DecodeError, EncodeError

__all__ = ["Codec", "decode_payload", "encode_payload", "parse_codec"]


class Codec(enum.IntEnum):
    """Payload codec ids, as carried in the message header."""

    RAW = 0
    JSON = 1
    MSGPACK = 2


def _json_dumps_stdlib(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


try:  # orjson is an optional extra: about 5x faster on typical event payloads.
    import orjson

    _json_dumps: Callable[[Any], bytes] = orjson.dumps
    _json_loads: Callable[[bytes], Any] = orjson.loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, orjson.JSONEncodeError)
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _json_dumps = _json_dumps_stdlib
    _json_loads = json.loads
    # The C encoder raises RecursionError on deep nesting; orjson has its own limit.
    _JSON_ERRORS = (TypeError, ValueError, RecursionError)


def parse_codec(name: str | Codec) -> Codec:
    """Read a codec name (``json``, ``msgpack``, ``raw``) as given in config."""
    if isinstance(name, Codec):
        return name
    try:
        codec = Codec[str(name).upper()]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}: choose json, msgpack or raw") from None
    if codec == Codec.MSGPACK:
        _msgpack()
    return codec


def _msgpack() -> Any:
    try:
        import msgpack  # noqa: PLC0415 - optional extra, imported when first used
    except ImportError:
        raise EncodeError(
            "the msgpack codec needs the msgpack package: pip install 'circus-events[msgpack]'"
        ) from None
    return msgpack


# Plain ints: comparing with an enum member looks it up on the class each time,
# which costs more than the raw codec's whole work (both run per message).
_JSON_ID: Final = int(Codec.JSON)
_RAW_ID: Final = int(Codec.RAW)
_MSGPACK_ID: Final = int(Codec.MSGPACK)


def encode_payload(codec: Codec, data: Any) -> bytes:
    """Encode ``data``; raise :class:`EncodeError` naming the problem."""
    if codec == _JSON_ID:
        try:
            encoded = _json_dumps(data)
        except _JSON_ERRORS as exc:
            raise EncodeError(f"cannot encode {type(data).__name__} as JSON: {exc}") from exc
        # orjson writes NaN and infinities as null: refuse them, as json does.
        if b"null" in encoded and _not_finite(data):
            raise EncodeError("cannot encode NaN or Infinity as JSON: JSON has no such numbers")
        return encoded
    if codec == _RAW_ID:
        if type(data) is bytes:
            return data
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        if isinstance(data, str):
            return data.encode("utf-8")
        raise EncodeError(f"the raw codec takes bytes or str, not {type(data).__name__}")
    try:
        packed: bytes = _msgpack().packb(data, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {type(data).__name__} as msgpack: {exc}") from exc
    return packed


def _not_finite(data: Any) -> bool:
    """Whether ``data`` holds a float NaN or infinity (in dicts, lists, tuples)."""
    if isinstance(data, float):
        return not math.isfinite(data)
    if isinstance(data, dict):
        return any(_not_finite(value) for value in data.values())
    if isinstance(data, (list, tuple)):
        return any(_not_finite(item) for item in data)
    return False


def decode_payload(codec: int, payload: bytes) -> Any:
    """Decode a payload with the codec its header names."""
    if codec == _JSON_ID:
        try:
            return _json_loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: the stdlib decoder on deeply nested input from a peer.
            raise DecodeError(f"payload is not valid JSON: {exc}") from exc
    if codec == _RAW_ID:
        return payload
    if codec == _MSGPACK_ID:
        try:
            module = _msgpack()
        except EncodeError as exc:
            raise DecodeError(str(exc)) from None
        try:
            return module.unpackb(payload, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise DecodeError(f"payload is not valid msgpack: {exc}") from exc
    raise DecodeError(f"unknown codec id {codec}")
