"""The server's reply decides each delivery: retries, failures, bounces, lost connections."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mailer import tasks
from mailer.bounces import outcomes
from mailer.editions import reservations, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.mail.transport import connect
from mailer.mail.verp import return_paths
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Frequency,
    Status,
    Subscription,
    SubscriptionEvent,
    utcnow,
)
from mailer.readers.suppressions import is_suppressed
from mailer.sending import loop, sweeps
from tests.conftest import configure, truncate_all, wait_for
from tests.fixtures.bounces import load
from tests.helpers.editions import (
    SENDER,
    add_article,
    add_reader,
    make_newsletter,
    row_for,
    statuses,
    wait_done,
)
from tests.helpers.editions import prepared_edition as prepared_rows
from tests.helpers.verdicts import address_state, on_two_newsletters
from tests.smtp import start_smtp_server

# Every reply is read the same whether the server takes commands one by one or pipelined.
pytestmark = pytest.mark.parametrize(
    "smtp_server", [False, True], indirect=True, ids=["stepwise", "pipelined"]
)


@pytest.fixture
def renderer(settings):
    return EmailRenderer(settings.email_templates)


def prepared_edition(session, settings, renderer, emails):
    digest_id, ranges, subs = prepared_rows(session, settings, emails)
    return digest_id, ranges[0], subs


def refuse_first(code_text: str, times: int = 1):
    """An on_rcpt script that refuses each address `times` times, then accepts."""
    seen: dict[str, int] = {}

    def script(address: str) -> str | None:
        seen[address] = seen.get(address, 0) + 1
        return code_text if seen[address] <= times else None

    return script


@pytest.mark.parametrize("reply", ["451 4.3.0 try again later", "421 4.7.0 too busy, closing"])
def test_temporary_refusal_is_deferred_with_backoff_then_delivered(
    session, settings, renderer, smtp_server, reply
):
    digest_id, (lo, hi), subs = prepared_edition(
        session, settings, renderer, ["a@example.org", "b@example.org", "c@example.org"]
    )
    smtp_server.handler.script.on_rcpt = refuse_first(reply)
    result = loop.send_range(session, settings, digest_id, lo, hi)
    assert (result.sent, result.deferred) == (0, 3)
    before = utcnow()
    for sub in subs.values():
        row = row_for(session, sub)
        assert (row.status, row.attempts, row.smtp_code) == (
            DeliveryStatus.DEFERRED,
            1,
            int(reply[:3]),
        )
        # Due one retry base (60 s by default) later, not now.
        assert row.next_attempt_at > before + timedelta(seconds=30)
    assert sweeps.due_ranges(session, settings) == []

    session.execute(update(Delivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    assert sweeps.due_ranges(session, settings) == [(digest_id, lo, hi)]
    result = loop.send_range(session, settings, digest_id, lo, hi)

    assert result.sent == 3
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(subs)
    assert {row_for(session, s).attempts for s in subs.values()} == {2}


def test_retries_back_off_exponentially_until_attempts_run_out(
    session, settings, renderer, smtp_server, monkeypatch
):
    settings = configure(monkeypatch, send_max_attempts="3", send_retry_base="10")
    digest_id, (lo, hi), subs = prepared_edition(session, settings, renderer, ["x@example.org"])
    smtp_server.handler.script.on_rcpt = lambda addr: "452 4.2.2 mailbox full"
    [sub] = subs.values()
    waits = []
    for _ in range(3):
        started = utcnow()
        loop.send_range(session, settings, digest_id, lo, hi)
        row = row_for(session, sub)
        if row.status is DeliveryStatus.DEFERRED:
            waits.append(round((row.next_attempt_at - started).total_seconds()))
            session.execute(update(Delivery).values(next_attempt_at=utcnow()))
            session.commit()
    assert waits == [10, 20]
    assert (row.status, row.attempts, row.smtp_code) == (DeliveryStatus.FAILED, 3, 452)
    assert smtp_server.received == []
    # Given up: its articles are no longer reserved for it.
    assert reservations.reserved_articles(session) == set()


def test_hard_bounce_fails_suppresses_and_marks_the_subscription_bounced(
    session, settings, renderer, smtp_server
):
    digest_id, (lo, hi), subs = prepared_edition(
        session, settings, renderer, ["ok@example.org", "nobody@example.org"]
    )
    smtp_server.handler.script.on_rcpt = lambda a: (
        "550 5.1.1 no such user" if a.startswith("nobody") else None
    )
    result = loop.send_range(session, settings, digest_id, lo, hi)

    assert (result.sent, result.failed, result.bounced) == (1, 1, 1)
    row = row_for(session, subs["nobody@example.org"])
    assert (row.status, row.smtp_code) == (DeliveryStatus.FAILED, 550)
    assert "no such user" in row.smtp_reply
    assert is_suppressed(session, "NOBODY@example.org")
    assert session.get(Subscription, subs["nobody@example.org"].id).status is Status.BOUNCED
    event = session.scalars(
        select(SubscriptionEvent).where(SubscriptionEvent.source == "smtp-bounce")
    ).one()
    assert "550" in event.detail
    assert not is_suppressed(session, "ok@example.org")


def test_a_550_at_send_time_and_a_bounce_report_for_the_address_leave_the_same_state(
    session, settings, renderer, smtp_server
):
    gone = "gone@example.org"
    # The reply: the server refuses the address while the edition goes out.
    on_two_newsletters(session, gone)
    digest_id, (lo, hi), _ = prepared_edition(session, settings, renderer, [gone])
    smtp_server.handler.script.on_rcpt = lambda a: "550 5.1.1 no such user"
    loop.send_range(session, settings, digest_id, lo, hi)
    by_reply = address_state(session, gone)

    # The report: the same world again, the mail accepted, then the bounce for it arrives.
    session.close()
    truncate_all(settings.database)
    smtp_server.handler.script.on_rcpt = None
    on_two_newsletters(session, gone)
    digest_id, (lo, hi), subs = prepared_edition(session, settings, renderer, [gone])
    loop.send_range(session, settings, digest_id, lo, hi)
    sent = row_for(session, subs[gone])
    assert sent.status is DeliveryStatus.SENT
    verp = return_paths(settings)
    report = load("postfix_hard", verp.for_delivery(sent.id, SENDER), gone)
    assert outcomes.handle_raw(session, verp, report).result == "hard-bounce"
    session.commit()
    by_report = address_state(session, gone)

    ended = [("news", Status.BOUNCED), ("other", Status.BOUNCED)]
    assert by_reply.subscriptions == by_report.subscriptions == ended
    assert by_reply.suppression == by_report.suppression == "hard-bounce"
    assert by_reply.events == by_report.events
    assert ("other", "active", "bounced") in by_report.events
    assert by_reply.deliveries == by_report.deliveries == [(DeliveryStatus.FAILED, 550)]
    assert (by_reply.sources, by_report.sources) == ({"smtp-bounce"}, {"bounce"})


def test_other_permanent_refusal_fails_without_suppressing(
    session, settings, renderer, smtp_server
):
    digest_id, (lo, hi), subs = prepared_edition(session, settings, renderer, ["big@example.org"])
    smtp_server.handler.script.on_data = lambda env: "554 5.6.0 message refused"
    loop.send_range(session, settings, digest_id, lo, hi)
    row = row_for(session, subs["big@example.org"])
    assert (row.status, row.smtp_code) == (DeliveryStatus.FAILED, 554)
    assert not is_suppressed(session, "big@example.org")
    assert session.get(Subscription, subs["big@example.org"].id).status is Status.ACTIVE


def test_a_relay_without_smtputf8_fails_a_non_ascii_address_on_record_without_a_bounce(
    session, settings, renderer, smtp_server, monkeypatch
):
    """Our relay's missing capability is not the reader's fault: the delivery fails with
    the reason, the reader stays active and unsuppressed (was: a synthetic 553, read as a
    hard bounce, suppressing every non-ASCII address for good)."""
    relay = start_smtp_server(pipelining=smtp_server.handler.pipelining, enable_SMTPUTF8=False)
    try:
        settings = configure(monkeypatch, smtp_url=relay.url)
        digest_id, (lo, hi), subs = prepared_edition(
            session, settings, renderer, ["юзер@пример.рф", "ann@example.org", "bob@bücher.de"]
        )
        result = loop.send_range(session, settings, digest_id, lo, hi)
    finally:
        relay.stop()

    assert (result.sent, result.failed, result.bounced) == (2, 1, 0)
    row = row_for(session, subs["юзер@пример.рф"])
    assert (row.status, row.smtp_code) == (DeliveryStatus.FAILED, None)
    assert "SMTPUTF8" in row.smtp_reply and row.smtp_reply.startswith("not sent")
    assert not is_suppressed(session, "юзер@пример.рф")
    assert session.get(Subscription, subs["юзер@пример.рф"].id).status is Status.ACTIVE
    # An ASCII local part at an IDN domain needs no SMTPUTF8: punycode in the envelope.
    assert sorted(r.rcpt_tos[0] for r in relay.received) == [
        "ann@example.org",
        "bob@xn--bcher-kva.de",
    ]


def test_unreachable_server_leaves_every_row_queued_and_unattempted(
    session, settings, renderer, smtp_server
):
    digest_id, (lo, hi), subs = prepared_edition(
        session, settings, renderer, ["a@example.org", "b@example.org"]
    )
    smtp_server.stop()
    with pytest.raises(loop.TemporaryFailure, match="cannot connect"):
        loop.send_range(session, settings, digest_id, lo, hi)
    assert {(r.status, r.attempts) for r in map(lambda s: row_for(session, s), subs.values())} == {
        (DeliveryStatus.QUEUED, 0)
    }


def test_connection_lost_mid_batch_marks_the_one_in_flight_unknown_and_hands_back_the_rest(
    session, settings, renderer, smtp_server
):
    emails = [f"r{i}@example.org" for i in range(4)]
    digest_id, (lo, hi), subs = prepared_edition(session, settings, renderer, emails)
    conns = []

    def opener():
        conn = connect(settings.smtp)
        conns.append(conn)
        return conn

    def drop_on_second(address: str) -> str | None:
        if address == "r1@example.org":
            conns[0].sock.shutdown(socket.SHUT_RDWR)  # the network goes away
        return None

    smtp_server.handler.script.on_rcpt = drop_on_second
    with pytest.raises(loop.TemporaryFailure, match="connection lost"):
        loop.send_range(session, settings, digest_id, lo, hi, opener=opener)
    got = {e: row_for(session, s) for e, s in subs.items()}
    assert got["r0@example.org"].status is DeliveryStatus.SENT
    assert got["r1@example.org"].status is DeliveryStatus.UNKNOWN
    assert got["r1@example.org"].smtp_reply.startswith("outcome unknown")
    assert {(got[e].status, got[e].attempts) for e in emails[2:]} == {(DeliveryStatus.QUEUED, 0)}

    # The retry of the batch sends the rest, and the unknown one again.
    smtp_server.handler.script.on_rcpt = None
    result = loop.send_range(session, settings, digest_id, lo, hi)
    assert result.sent == 3
    assert {r.status for r in map(lambda s: row_for(session, s), subs.values())} == {
        DeliveryStatus.SENT
    }


def test_worker_retries_deferred_mail_via_the_tick(
    session, settings, smtp_server, celery_worker, monkeypatch
):
    configure(monkeypatch, send_retry_base="0")
    nl = make_newsletter(session)
    add_reader(session, nl, "later@example.org")
    add_reader(session, nl, "now@example.org")
    add_article(session, nl, "Story")
    session.commit()
    smtp_server.handler.script.on_rcpt = refuse_first("451 4.7.1 greylisted", times=2)
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    session.commit()
    tasks.prepare_digest.delay(edition.id)

    def delivered():
        tasks.tick()  # what beat runs once a minute
        return len(smtp_server.received) == 2

    wait_for(delivered, timeout=30, interval=0.3)
    wait_done(session, edition.id)
    assert {s.value for s in statuses(session, edition.id).values()} == {"sent"}
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        "later@example.org",
        "now@example.org",
    ]
