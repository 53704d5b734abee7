"""One resuming websocket's seam between replay and live feed (sans-IO)."""

from __future__ import annotations

import json

from circus_events.protocol.wsresume import Resume


def ev(n: int) -> tuple[str, str]:
    return f"o~1~c~{n}", f"frame{n}"


def test_resume_skips_up_to_last_id_and_joins_the_live_feed_without_duplicates() -> None:
    resume = Resume("c", last_id="o~1~c~3")
    out: list[str] = []
    out += resume.live(*ev(7))  # live, held while the replay loads
    for n in range(1, 9):  # history 1..6 then the live part 7, 8
        out += resume.replayed(*ev(n))
        if resume.done:
            break
    out += resume.live(*ev(8))
    assert out == ["frame4", "frame5", "frame6", "frame7", "frame8"]
    assert resume.done
    assert resume.replayed(*ev(9)) == []
    assert resume.failed() == [] and resume.settle() == []


def test_resume_held_events_already_replayed_are_not_sent_twice() -> None:
    resume = Resume("c", last_id="o~1~c~1")
    assert resume.live(*ev(3)) == []
    assert resume.live(*ev(4)) == []
    assert resume.replayed(*ev(1)) == []
    assert resume.replayed(*ev(2)) == ["frame2"]
    assert resume.replayed(*ev(3)) == ["frame3", "frame4"]


def test_resume_last_id_not_in_the_replay_is_a_gap_of_unknown_size() -> None:
    resume = Resume("c", last_id="gone")
    resume.live(*ev(3))
    assert resume.replayed(*ev(2)) == []
    out = resume.replayed(*ev(3))
    assert [json.loads(out[0]), *out[1:]] == [
        {"type": "gap", "channel": "c", "missed": None},
        "frame2",
        "frame3",
    ]


def test_resume_settles_when_the_replay_goes_quiet() -> None:
    resume = Resume("c", last_id="gone")
    assert resume.settle() == []  # nothing replayed yet: keep waiting
    resume.replayed(*ev(1))
    assert resume.settle()[1:] == ["frame1"]
    assert resume.settle() == []
    assert resume.replayed(*ev(2)) == ["frame2"]
    resume.live(*ev(3))
    assert resume.replayed(*ev(3)) == ["frame3"]


def test_resume_without_history_is_a_gap_then_the_live_feed() -> None:
    resume = Resume("c", last_id="x")
    resume.live(*ev(1))
    out = resume.failed()
    assert json.loads(out[0])["missed"] is None and out[1:] == ["frame1"]
    assert resume.live(*ev(2)) == ["frame2"]


def test_resume_holds_live_events_up_to_a_bound() -> None:
    resume = Resume("c", last_id="o~1~c~1", hold_bytes=11)
    resume.replayed(*ev(1))
    assert resume.live(*ev(5)) == []
    assert resume.live(*ev(6)) == ["frame5", "frame6"]  # 12 bytes held: past 11, the bound
    assert resume.done


def test_resume_keeps_the_newest_replayed_events_within_the_bound_while_seeking() -> None:
    resume = Resume("c", last_id="gone", hold_bytes=20)  # two 6-byte frames and a bit
    for n in range(1, 1001):
        assert resume.replayed(*ev(n)) == []
    assert resume._seek_bytes <= 20
    out = resume.settle()
    assert json.loads(out[0])["missed"] is None
    assert out[1:] == ["frame999", "frame1000"]  # the rest is under the gap


def test_resume_keeps_one_replayed_event_even_past_the_bound() -> None:
    resume = Resume("c", last_id="gone", hold_bytes=3)
    resume.replayed(*ev(1))
    resume.replayed(*ev(2))
    assert resume.settle()[1:] == ["frame2"]


def test_resume_finds_last_id_after_dropping_older_replayed_events() -> None:
    resume = Resume("c", last_id="o~1~c~500", hold_bytes=20)
    for n in range(1, 501):
        resume.replayed(*ev(n))
    assert resume.replayed(*ev(501)) == ["frame501"]  # no gap: nothing was missed


def test_resume_does_not_send_a_dropped_replayed_event_late_from_the_live_feed() -> None:
    resume = Resume("c", last_id="gone", hold_bytes=14)
    resume.replayed(*ev(1))
    resume.replayed(*ev(2))
    resume.replayed(*ev(3))  # frame1 dropped: 18 bytes past 14
    out = resume.live(*ev(1)) + resume.live(*ev(4)) + resume.live(*ev(5))  # 18 held: join
    assert out[1:] == ["frame2", "frame3", "frame4", "frame5"]


def test_a_cancelled_resume_sends_nothing_more_not_even_its_gap() -> None:
    """Unsubscribed mid-replay: what it held and looked at is forgotten."""
    resume = Resume("c", last_id="gone")
    assert resume.live(*ev(5)) == []
    assert resume.replayed(*ev(1)) == []
    resume.cancel()
    assert resume.done
    assert resume.settle() == [] and resume.failed() == []
    assert resume.replayed(*ev(5)) == []
