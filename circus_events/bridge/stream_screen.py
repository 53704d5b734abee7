"""Stream mode's read command, and stepping over an entry too large to read.

hiredis holds a whole value before it hands it over, so one entry larger
than any bridge writes (someone else's ``XADD`` of 500 MB, say) would be
read whole before the bridge refused it, at every bridge, and again after
every reconnection until the cursor passed it. So the sub connection's
reader is watched: a value still arriving past :attr:`ReadCommand.limit`
bytes (the largest value a bridge writes, and a margin) can only be such an
entry, and the bridge drops the connection there. The next read, from the
same cursors, is a Lua script that does in Redis what ``XREAD`` does but
replaces every entry over the limit with an entry without fields, which the
reply filter counts as malformed and steps over (``stream_reply``). Reads go
back to ``XREAD`` after that one. Where Redis refuses scripts, the next
``XREAD`` is read whole, once, as before this guard, rather than stop there.
"""

from __future__ import annotations

from typing import Any, Final

from .._config import FRAME_SLACK
from .stream_cursor import format_id, parse_id

__all__ = ["SCREEN_SCRIPT", "ReadCommand"]

#: KEYS: the shards. ARGV: count, limit, then each shard's first id to read.
#: The reply has XREAD's shape: {{key, {{id, fields}, ...}}, ...}, or nil.
SCREEN_SCRIPT: Final = """
local count, limit, found = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
for i, key in ipairs(KEYS) do
  local entries = redis.call('XRANGE', key, ARGV[i + 2], '+', 'COUNT', count)
  for _, entry in ipairs(entries) do
    local size = 0
    for _, field in ipairs(entry[2]) do size = size + #field end
    if size > limit then entry[2] = {} end
  end
  if #entries > 0 then found[#found + 1] = {key, entries} end
end
if #found == 0 then return false end
return found
"""

#: Beyond the largest value a bridge writes: its stamp, and what hiredis may
#: hold of the next reply's start.
_MARGIN: Final = 64 * 1024
_MAX_SEQ: Final = 2**64 - 1


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


class ReadCommand:
    """Builds each read of the shards from their cursors: ``XREAD``, or the screen."""

    __slots__ = ("_count", "_head", "_keys", "_sent", "limit", "screened", "screening")

    def __init__(self, keys: list[bytes], count: int, block_ms: int, max_message_bytes: int):
        self._keys = keys
        self._count = count
        args = [b"XREAD", b"COUNT", b"%d" % count, b"BLOCK", b"%d" % block_ms, b"STREAMS", *keys]
        self._head = b"*%d\r\n" % (len(args) + len(keys)) + b"".join(map(_bulk, args))
        #: A value still arriving past this many bytes is not a bridge's.
        self.limit = max_message_bytes + FRAME_SLACK + _MARGIN
        #: True: the next read is the screen (an oversized entry is ahead).
        self.screening = False
        #: Reads that met an oversized entry.
        self.screened = 0
        #: The read in flight: "xread", "screen", "refused" (the screen, refused)
        #: or "whole" (XREAD, not watched).
        self._sent = "xread"

    def command(self, cursors: list[bytes]) -> bytes:
        """The next read from ``cursors`` (each shard's last id read)."""
        if not self.screening:
            self._sent = "whole" if self._sent == "refused" else "xread"
            return b"".join((self._head, *map(_bulk, cursors)))
        self.screening = False
        self._sent = "screen"
        starts = [_after(cursor) for cursor in cursors]
        args = [b"EVAL", SCREEN_SCRIPT.encode(), b"%d" % len(self._keys), *self._keys]
        args += [b"%d" % self._count, b"%d" % self.limit, *starts]
        return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))

    def refused(self) -> None:
        """Redis refused the read in flight. If it was the screen (scripting off,
        or denied by an ACL), the next read is XREAD read whole, once: the entry
        is then read like any other and refused, rather than stop the stream."""
        if self._sent == "screen":
            self._sent = "refused"

    def oversized(self, reader: Any) -> bool:
        """Whether the reply arriving in ``reader`` (a hiredis.Reader that has no
        whole reply yet) holds a value past the limit; if so the next read screens."""
        if self.screening or self._sent == "whole" or reader.len() <= self.limit:
            return False
        self.screening = True
        self.screened += 1
        return True


def _after(cursor: bytes) -> bytes:
    """The first stream id after ``cursor``, for XRANGE's start."""
    ms, seq = parse_id(cursor)
    return format_id((ms, seq + 1) if seq < _MAX_SEQ else (ms + 1, 0))
