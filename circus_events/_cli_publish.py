"""``circus-events publish``: DATA, or each line of stdin, on one channel.

DATA is checked here, before the bus sees it: text that is not UTF-8, JSON
that Python reads but no other reader does (``NaN``, ``Infinity``, ``1e999``
would arrive as ``null``), nesting too deep for the parser. With ``-`` the
first line that cannot go stops the command: the lines before it are sent
(nothing accepted is lost), and the error names the line and how many were
published, so that a script knows where to resume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, NamedTuple, NoReturn

from ._exceptions import PublishTimeout

__all__ = ["BadData", "Stop", "parse_data", "publish_lines"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


class BadData(ValueError):
    """DATA (or a line of stdin) that is not sent; the message says why."""


class Stop(NamedTuple):
    """Why ``publish -`` stopped before the end of stdin, and the exit code."""

    message: str
    code: int


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise BadData(f"DATA is not valid JSON: the number {text[:40]} is out of range")
    return number


def _no_constant(name: str) -> NoReturn:
    raise BadData(f"DATA is not valid JSON: {name} is not a JSON number")


def parse_data(text: str, raw: bool) -> Any:
    """DATA as it is sent: the text itself (``raw``) or the JSON value it holds."""
    try:
        text.encode("utf-8")  # bytes that are not UTF-8 reach argv as lone surrogates
    except UnicodeEncodeError:
        raise BadData("DATA is not valid UTF-8") from None
    if raw:
        return text
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except BadData:
        raise
    except RecursionError:
        raise BadData("DATA is not valid JSON: nested too deeply") from None
    except ValueError:
        raise BadData(f"DATA is not valid JSON: {text[:80]!r} (use --raw for plain text)") from None


def publish_lines(
    bus: Any, channel: str, lines: Iterable[bytes], *, raw: bool, scope: str
) -> Stop | None:
    """Publish each non-empty line; at the first that cannot go, say why and stop."""
    sent = 0
    for number, line in enumerate(lines, 1):
        text = line.removesuffix(b"\n").removesuffix(b"\r")
        if not text:
            continue
        try:
            bus.publish(channel, parse_data(text.decode("utf-8"), raw), scope=scope)
        except UnicodeDecodeError:
            return _stop(number, sent, "DATA is not valid UTF-8", EXIT_USAGE)
        except ValueError as exc:  # BadData, MessageTooLarge, EncodeError
            return _stop(number, sent, str(exc), EXIT_USAGE)
        except PublishTimeout as exc:
            return _stop(number, sent, str(exc), EXIT_FAILURE)
        sent += 1
    return None


def _stop(number: int, sent: int, why: str, code: int) -> Stop:
    done = f"{sent} line{'' if sent == 1 else 's'} published"
    return Stop(f"line {number}: {why} ({done}; line {number} onward not sent)", code)
