"""Pre-built server frames: what the websockets library itself would send."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from circus_events.protocol.wsframe import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 70_000])
def test_text_frame_matches_the_websockets_library_at_every_length_boundary(size: int) -> None:
    text = "x" * size
    assert text_frame(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def test_text_frame_length_counts_utf8_bytes_not_characters() -> None:
    text = "é" * 100  # 100 characters, 200 bytes: the 16-bit length form
    assert text_frame(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert text_frame(text)[1] == 126
