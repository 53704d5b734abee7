"""protocol.confirms: the confirm payload, both ways, and what it refuses."""

from __future__ import annotations

import pytest

from circus_events._exceptions import ProtocolError
from circus_events.protocol import (
    CONFIRMED,
    HELLO_CONFIRMS,
    HELLO_NO_CONFIRMS,
    INSTANCE_BYTES,
    Confirm,
    decode_confirm,
    encode_confirm,
)

ID = b"\x01" * INSTANCE_BYTES


@pytest.mark.parametrize(
    "confirm",
    [
        Confirm(HELLO_NO_CONFIRMS, ID, []),
        Confirm(HELLO_CONFIRMS, ID, []),
        Confirm(CONFIRMED, ID, [("orders", 7, 42), ("@w:été", 2**63, 2**64 - 1), ("", 0, 0)]),
    ],
)
def test_round_trip(confirm: Confirm) -> None:
    assert decode_confirm(encode_confirm(*confirm)) == confirm


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "not a confirm"),
        (b"\x02" + ID[:-1], "not a confirm"),
        (b"\x03" + ID, "not a confirm"),
        (b"\x02" + ID + b"\x00" * 17, "truncated confirm entry"),
        (encode_confirm(CONFIRMED, ID, [("abc", 1, 1)])[:-1], "truncated confirm key"),
        (encode_confirm(CONFIRMED, ID, [("ab", 1, 1)])[:-2] + b"\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_payloads_raise_protocol_error(payload: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_confirm(payload)
