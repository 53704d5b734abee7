"""A history reply's rules (``bridge.history``): what it carries, and how it
waits for its worker. The bridge's own sends are a function here; the real
sockets are in ``tests/test_history.py``."""

from __future__ import annotations

import asyncio

import pytest
from helpers import make_frame

from circus_events.bridge import history
from circus_events.bridge.history import replay_frames, send_reply
from circus_events.protocol import FLAG_REPLAY, HistoryRequest, decode_frame

TOKEN = b"t" * 8


def request(limit: int | None = None) -> HistoryRequest:
    return HistoryRequest("w-1", TOKEN, limit, None, "news.*")


def test_a_reply_carries_the_newest_events_for_its_worker_only() -> None:
    stored = [make_frame("news.a", n) for n in range(1, 6)]
    stored.insert(2, make_frame("news.a", 99, target="someone"))  # direct: never history
    stored.append(b"garbage")
    frames, error = replay_frames(stored, request(limit=3))
    assert error == ""
    envs = [decode_frame(frame) for frame in frames]
    assert [env.seq for env in envs] == [3, 4, 5]
    assert all(env.target == "w-1" and env.flags & FLAG_REPLAY for env in envs)
    assert all(env.payload == TOKEN + b"p" for env in envs)
    assert replay_frames(stored, request(limit=0)) == ([], "")


def test_a_reply_past_its_byte_budget_keeps_the_newest_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = [make_frame("news.a", n, payload=b"x" * 1000) for n in range(1, 11)]
    one = len(replay_frames(stored[:1], request())[0][0])
    monkeypatch.setattr(history, "HISTORY_MAX_BYTES", 4 * one)
    frames, error = replay_frames(stored, request())
    assert [decode_frame(frame).seq for frame in frames] == [7, 8, 9, 10]
    assert "truncated to the newest 4 events" in error


def test_a_reply_waits_while_the_queue_is_full() -> None:
    attempts: list[bytes] = []
    full = iter([False, False, True, True, False, True])

    def try_send(frame: bytes) -> bool | None:
        attempts.append(frame)
        return next(full)

    sent, error = asyncio.run(send_reply(try_send, [b"a", b"b", b"c"], asyncio.Event()))
    assert (sent, error) == (3, "")
    assert attempts == [b"a", b"a", b"a", b"b", b"c", b"c"]


def test_a_large_event_that_lost_a_piece_is_reported() -> None:
    results = iter([True, None, True])
    sent, error = asyncio.run(
        send_reply(lambda frame: next(results), [b"a", b"big", b"c"], asyncio.Event())
    )
    assert sent == 2 and "1 large events did not fit" in error


def test_a_worker_that_does_not_read_ends_the_reply_with_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(history, "HISTORY_SEND_TIMEOUT", 0.05)
    results = iter([True])
    sent, error = asyncio.run(
        send_reply(lambda frame: next(results, False), [b"a", b"b", b"c"], asyncio.Event())
    )
    assert sent == 1 and "the worker read 1 of 3 events" in error


def test_a_stopping_bridge_ends_a_waiting_reply() -> None:
    stopping = asyncio.Event()
    stopping.set()
    sent, error = asyncio.run(send_reply(lambda frame: False, [b"a"], stopping))
    assert sent == 0 and "incomplete" in error
