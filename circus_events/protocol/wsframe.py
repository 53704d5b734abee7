"""Server-to-browser websocket frames as bytes, built once per event.

Theory of operation: a server's frames are never masked (RFC 6455, 5.1), so
the bytes of one text frame are the same for every socket it goes to. The
hub builds them once per event (:func:`text_frame`) and writes that one
``bytes`` object to each socket's transport, instead of asking the server
library to frame the same text again for each socket.

No socket, no clock: text in, bytes out.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["text_frame"]

#: FIN set, opcode 1 (text); RSV bits clear: never compressed, which
#: permessage-deflate allows for any message (RFC 7692, 6.1).
_TEXT: Final = 0x81
#: Largest length in the 7-bit field; up to 0xFFFF in 16 bits; then 64 bits.
_SHORT: Final = 125
_MEDIUM: Final = 0xFFFF


def text_frame(text: str) -> bytes:
    """One complete, unfragmented, unmasked text frame holding ``text``."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size <= _SHORT:
        header = struct.pack("!BB", _TEXT, size)
    elif size <= _MEDIUM:
        header = struct.pack("!BBH", _TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", _TEXT, 127, size)
    return header + payload
