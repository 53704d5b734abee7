"""Leader election rules (protocol/lease.py): messages, a candidate's term, a bridge's desk."""

from __future__ import annotations

import pytest

from circus_events._exceptions import ChannelError, ProtocolError
from circus_events.protocol.lease import (
    LEADER_REQUEST,
    OP_QUIT,
    OP_WANT,
    LeaderReply,
    LeaderRequest,
    RoleDesk,
    WorkerTerm,
    build_leader_reply,
    build_leader_request,
    check_role,
    check_ttl,
    leader_channel,
    parse_leader_reply,
    parse_leader_request,
    poll_period,
    renew_deadline,
    retry_period,
)


def test_timings_follow_client_go_and_poll_fast_enough_for_a_release() -> None:
    assert renew_deadline(15.0) == pytest.approx(10.0)
    assert retry_period(12.0) == pytest.approx(2.0)
    assert poll_period(0.6) == pytest.approx(0.1)
    assert poll_period(10.0) == 0.25
    assert renew_deadline(0.5) < 0.5


@pytest.mark.parametrize("ttl", [0.1, 100000.0, "1", True, None])
def test_check_ttl_refuses_what_is_not_a_sane_lease(ttl: object) -> None:
    with pytest.raises(ChannelError):
        check_ttl(ttl)


def test_check_role() -> None:
    assert check_role("billing") == "billing"
    assert check_ttl(1) == 1.0
    assert leader_channel("billing") == "@leader.billing"
    for bad in ("@x", "a*", "", "x" * 195):
        with pytest.raises(ChannelError):
            check_role(bad)


def test_requests_round_trip() -> None:
    frame = build_leader_request(OP_WANT, "h/w/1", "job", "host", 0.5, 7, 3, 1234)
    assert parse_leader_request(frame) == LeaderRequest(
        OP_WANT, "h/w/1", "job", "host", 0.5, 7, 3, 1234
    )


@pytest.mark.parametrize(
    "frame",
    [
        b"\x02w",
        LEADER_REQUEST,
        LEADER_REQUEST + b"w\xff\xfe",
        LEADER_REQUEST + b"zw\0job\0cluster\x00500\x000\x000\x000",
        LEADER_REQUEST + b"ww\0job\0cluster\x00500\x000\x000",
        LEADER_REQUEST + b"ww\0@job\0cluster\x00500\x000\x000\x000",
        LEADER_REQUEST + b"ww\0job\0cluster\x0050\x000\x000\x000",
        LEADER_REQUEST + b"ww\0job\0world\x00500\x000\x000\x000",
        LEADER_REQUEST + b"ww\0job\0cluster\x00500\x00-1\x000\x000",
        LEADER_REQUEST + b"ww\0job\0cluster\x00500\x000\x00" + b"9" * 21 + b"\x000",
    ],
)
def test_bad_requests_are_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_leader_request(frame)


def test_replies_round_trip_and_bad_ones_are_refused() -> None:
    reply = LeaderReply("ok", "job", "cluster", 5, 2, "w", "h", "")
    assert parse_leader_reply(build_leader_reply(reply)) == reply
    for bad in (b"\xff", b"ok\0job", b"nope\0job\0cluster\x005\x002\0w\0h\0"):
        with pytest.raises(ProtocolError):
            parse_leader_reply(bad)


def reply(
    kind: str, token: int = 0, req: int = 0, holder: str = "", reason: str = ""
) -> LeaderReply:
    return LeaderReply(kind, "job", "cluster", token, req, holder, "h", reason)


def elect(term: WorkerTerm, token: int, now: float) -> None:
    """Offer ``token`` and confirm the request that follows, sent at ``now``."""
    assert term.on_reply(reply("elected", token), now) is None
    assert term.due(now)
    op, sent_token, req = term.request(now)
    assert (op, sent_token) == (OP_WANT, token)
    change = term.on_reply(reply("ok", token, req, holder="me"), now + 0.01)
    assert change is not None and change.elected and change.token == token


def test_a_worker_leads_from_its_confirmed_request_until_the_renew_deadline() -> None:
    term = WorkerTerm("job", "cluster", 0.6)
    assert term.due(0.0)
    assert term.request(0.0) == (OP_WANT, 0, 1)
    assert not term.due(0.05)
    assert term.due(0.1)
    elect(term, 10, 1.0)
    assert term.is_leader(1.3) and not term.is_leader(1.4)
    assert term.holder == "me"
    # A renewal sent at 1.2 and confirmed extends the term from 1.2.
    _op, _token, req = term.request(1.2)
    assert term.on_reply(reply("ok", 10, req), 1.25) is None
    assert term.is_leader(1.59) and not term.is_leader(1.6)
    # Nothing more: the deadline passes on the worker's own clock.
    change = term.check(1.7)
    assert change is not None and not change.elected and change.until == pytest.approx(1.6)
    assert term.check(1.8) is None
    # The next request tells the bridge (quit), then the candidacy goes on.
    assert term.due(1.8)
    assert term.request(1.8)[:2] == (OP_QUIT, 10)
    assert term.request(1.8)[:2] == (OP_WANT, 0)
    # A late confirmation of the dead term revives nothing.
    assert term.on_reply(reply("ok", 10, req), 1.81) is None
    assert not term.is_leader(1.81)


def test_answers_that_prove_nothing_are_ignored() -> None:
    term = WorkerTerm("job", "cluster", 0.6)
    term.on_reply(reply("elected", 5), 0.0)
    _op, _token, req = term.request(0.0)
    # Too old: sent + renew deadline already passed.
    assert term.on_reply(reply("ok", 5, req), 0.5) is None
    assert not term.leading
    # Unknown request number.
    assert term.on_reply(reply("ok", 5, 999), 0.5) is None
    # An older offer does not replace a newer one; a lost offer is dropped.
    term.on_reply(reply("elected", 3), 0.6)
    assert term.offered == 5
    term.on_reply(reply("lost", 5), 0.6)
    assert term.offered == 0
    # A confirmation for a token never offered.
    _op, _token, req = term.request(0.7)
    assert term.on_reply(reply("ok", 8, req), 0.71) is None and not term.leading


def test_many_requests_in_flight_are_bounded() -> None:
    term = WorkerTerm("job", "cluster", 0.6)
    reqs = [term.request(i * 0.001)[2] for i in range(40)]
    assert len(term._sent) == 16
    assert reqs[0] not in term._sent


def test_holder_lost_and_withdraw() -> None:
    term = WorkerTerm("job", "cluster", 1.2)
    term.on_reply(reply("holder", holder="other"), 0.0)
    assert term.holder == "other"
    elect(term, 4, 1.0)
    # While leading, a holder message (stale) does not change who holds it.
    term.on_reply(reply("holder", holder="other"), 1.05)
    assert term.holder == "me"
    # A lost message for another token is ignored; for ours it ends the term.
    assert term.on_reply(reply("lost", 3), 1.1) is None
    change = term.on_reply(reply("lost", 4, reason="gone"), 1.2)
    assert change is not None and change.reason == "gone" and change.until == 1.2
    assert not term.to_quit
    elect(term, 6, 2.0)
    change = term.withdraw(2.1)
    assert change is not None and change.reason == "released"
    assert term.withdraw(2.2) is None
    assert not term.due(10.0)
    assert term.on_reply(reply("elected", 9), 2.3) is None


def test_withdraw_after_the_deadline_reports_the_deadline() -> None:
    term = WorkerTerm("job", "cluster", 0.6)
    elect(term, 4, 1.0)
    change = term.withdraw(5.0)
    assert change is not None and change.until == pytest.approx(1.4)
    other = WorkerTerm("job", "cluster", 0.6)
    assert other.withdraw(1.0) is None


def test_a_desk_elects_the_first_live_candidate_and_renews_its_term() -> None:
    desk = RoleDesk("job", "cluster", 0.6, not_before=1.0)
    desk.hear("a", 0.6, 11, 0.0)
    desk.hear("b", 0.9, 12, 0.5)
    assert desk.ttl == 0.9 and desk.renew_deadline == pytest.approx(0.6)
    assert desk.eligible(0.5) is None  # a previous run's holder may still believe
    assert desk.eligible(1.0) is None or desk.eligible(1.0) == "b"
    desk.hear("a", 0.6, 11, 1.0)
    assert desk.eligible(1.0) == "a"
    desk.begin("a", 7, 1.0)
    assert desk.eligible(1.0) is None
    assert desk.want("a", 0, 1.0) == ""
    assert desk.want("a", 7, 1.1) == "renew"
    assert desk.want("b", 3, 1.1) == "lost"
    assert desk.renewed(7, 1.1)
    assert not desk.renewed(6, 1.1)
    assert desk.expire(1.5) is None
    term = desk.expire(1.75)  # silent past the renew deadline
    assert term is not None and term.token == 7
    assert desk.blocked_until == pytest.approx(1.7)
    assert desk.expire(1.8) is None
    assert desk.renewed(7, 1.8) is False


def test_an_unconfirmed_offer_expires_without_blocking() -> None:
    desk = RoleDesk("job", "cluster", 0.6)
    desk.hear("a", 0.6, 0, 0.0)
    desk.begin("a", 1, 0.0)
    term = desk.expire(0.4)
    assert term is not None and term.confirmed is None
    assert desk.blocked_until == 0.0


def test_quit_withdraw_left_and_lose() -> None:
    desk = RoleDesk("job", "cluster", 0.6)
    assert desk.lose(0.0) is None
    for worker in ("a", "b", "c"):
        desk.hear(worker, 0.6, 0, 0.0)
    desk.begin("a", 1, 0.0)
    desk.renewed(1, 0.1)
    assert desk.quit("b", 1, 0.2) is None
    assert desk.quit("a", 2, 0.2) is None
    term = desk.quit("a", 1, 0.2)
    assert term is not None and desk.blocked_until == 0.0  # it said it stopped believing
    desk.begin("b", 2, 0.2)
    desk.renewed(2, 0.3)
    assert desk.withdraw("b", 2, 0.35) is not None
    assert "b" not in desk.candidates
    desk.begin("c", 3, 0.4)
    desk.renewed(3, 0.45)
    assert desk.left("a", 0.5, dead=True) is None
    term = desk.left("c", 0.5, dead=False)  # alive: wait out its deadline
    assert term is not None and desk.blocked_until == pytest.approx(0.85)
    desk.hear("d", 0.6, 0, 0.5)
    desk.begin("d", 4, 0.9)
    desk.renewed(4, 1.0)
    assert desk.left("d", 1.1, dead=True) is not None
    assert desk.blocked_until == pytest.approx(0.85)
    desk.hear("e", 0.6, 0, 1.1)
    desk.begin("e", 5, 1.1)
    desk.renewed(5, 1.2)
    assert desk.lose(1.3) is not None and desk.blocked_until == pytest.approx(1.6)
    assert not desk.idle(1.3)
    desk.withdraw("e", 0, 1.3)
    assert not desk.idle(1.5)
    assert desk.idle(1.6)
    assert desk.live(10.0) == []
