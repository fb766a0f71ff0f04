"""Bounces and complaints end to end: a real Maildir on disk, PostgreSQL, real SMTP and DKIM."""

from __future__ import annotations

from datetime import timedelta

import dkim
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailer.bounces import mailboxes, outcomes
from mailer.mail.dkim import generate_private_key, txt_record_value
from mailer.mail.rendering import EmailRenderer
from mailer.mail.verp import VerpTag, return_paths
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Notification,
    Status,
    Subscription,
    SubscriptionEvent,
    Suppression,
    utcnow,
)
from mailer.readers import newsletters, notices, suppressions
from mailer.readers import subscriptions as subs
from mailer.readers.addresses import address_hash
from tests.conftest import configure
from tests.fixtures.bounces import load

READER = "gone@example.com"
SENDER = "Weekly News <news@example.org>"


@pytest.fixture
def world(session):
    """A reader on two newsletters, and one digest delivery to them that was accepted."""
    newsletters.create_newsletter(session, "weekly", "Weekly News", SENDER)
    newsletters.create_newsletter(session, "daily", "Daily News", "Daily News <daily@example.org>")
    subs.subscribe(session, email=READER, newsletter="weekly", confirmed=True, source="import")
    subs.subscribe(session, email=READER, newsletter="daily", confirmed=True, source="import")
    weekly, daily = session.scalars(select(Subscription).order_by(Subscription.id)).all()
    now = utcnow()
    digest = Digest(
        newsletter_id=weekly.newsletter_id,
        frequency=Frequency.WEEKLY,
        window_start=now - timedelta(days=7),
        window_end=now,
    )
    session.add(digest)
    session.flush()
    delivery = Delivery(
        digest_id=digest.id,
        subscription_id=weekly.id,
        status=DeliveryStatus.SENT,
        smtp_code=250,
        smtp_reply="250 2.0.0 OK queued",
        sent_at=now,
    )
    session.add(delivery)
    session.commit()
    return {"weekly": weekly, "daily": daily, "delivery": delivery}


@pytest.fixture
def verp(settings):
    return return_paths(settings)


@pytest.fixture
def maildir(tmp_path, monkeypatch):
    root = tmp_path / "bounces"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    settings = configure(monkeypatch, bounce_maildir=str(root))
    return root, settings


def deliver(root, name, raw):
    """What an MDA does: write into tmp/, then rename into new/."""
    (root / "tmp" / name).write_bytes(raw)
    (root / "tmp" / name).rename(root / "new" / name)


def state(session):
    """Everything a report could change, to show that bad ones change none of it."""
    session.expire_all()
    return (
        [(s.id, s.status, s.soft_bounces) for s in session.scalars(select(Subscription))],
        session.scalars(select(Suppression.address_hash)).all(),
        len(session.scalars(select(SubscriptionEvent)).all()),
        [(d.id, d.status, d.smtp_reply) for d in session.scalars(select(Delivery))],
        [(n.id, n.status, n.last_error) for n in session.scalars(select(Notification))],
    )


def statuses(session):
    session.expire_all()
    return [s.status for s in session.scalars(select(Subscription).order_by(Subscription.id))]


def test_a_hard_bounce_in_the_maildir_suppresses_the_reader_and_fails_the_delivery(
    session, world, verp, maildir
):
    root, settings = maildir
    deliver(
        root,
        "1764000005.M1P1.mx",
        load("postfix_hard", verp.for_delivery(world["delivery"].id, SENDER), READER),
    )

    result = mailboxes.poll(settings)

    assert (result.seen, result.applied) == (1, 1)
    assert result.outcomes[0].result == "hard-bounce"
    assert suppressions.is_suppressed(session, READER)
    assert statuses(session) == [Status.BOUNCED, Status.BOUNCED]
    event = session.scalars(
        select(SubscriptionEvent).where(SubscriptionEvent.new_status == "bounced")
    ).first()
    assert event.source == "bounce" and "5.1.1" in event.detail
    delivery = session.get(Delivery, world["delivery"].id)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.smtp_code == 550 and "User unknown" in delivery.smtp_reply
    assert list((root / "new").iterdir()) == []
    assert [p.name for p in (root / ".processed" / "cur").iterdir()] == ["1764000005.M1P1.mx:2,S"]


def test_a_complaint_suppresses_the_reader_and_leaves_the_delivery_as_delivered(
    session, world, verp
):
    raw = load("arf_complaint", verp.for_delivery(world["delivery"].id, SENDER), READER)
    outcome = outcomes.handle_raw(session, verp, raw)
    session.commit()

    assert (outcome.result, outcome.applied) == ("complaint", True)
    assert statuses(session) == [Status.COMPLAINED, Status.COMPLAINED]
    suppression = session.scalars(select(Suppression)).one()
    assert suppression.address_hash == address_hash(READER)
    assert (suppression.reason, suppression.source) == ("complaint", "complaint")
    assert session.get(Delivery, world["delivery"].id).status is DeliveryStatus.SENT
    sources = session.scalars(select(SubscriptionEvent.source)).all()
    assert sources.count("complaint") == 2


def test_soft_bounces_suppress_only_when_they_come_in_a_row(
    session, settings, world, verp, smtp_server
):
    raw = load("exim_delayed", verp.for_delivery(world["delivery"].id, SENDER), READER)
    weekly_id = world["weekly"].id

    for expected in (1, 2):
        outcome = outcomes.handle_raw(session, verp, raw, soft_limit=3)
        session.commit()
        assert (outcome.result, session.get(Subscription, weekly_id).soft_bounces) == (
            "soft-bounce",
            expected,
        )
    assert statuses(session) == [Status.ACTIVE, Status.ACTIVE]
    assert not suppressions.is_suppressed(session, READER)

    # The server then takes a message for the reader: the count starts over.
    welcome = Notification(subscription_id=weekly_id, kind="welcome")
    session.add(welcome)
    session.commit()
    renderer = EmailRenderer(settings.email_templates)
    assert notices.send_notice(session, settings, renderer, welcome.id) == "sent"
    session.expire_all()
    assert session.get(Subscription, weekly_id).soft_bounces == 0

    results = []
    for _ in range(3):
        results.append(outcomes.handle_raw(session, verp, raw, soft_limit=3).result)
        session.commit()
    assert results == ["soft-bounce", "soft-bounce", "soft-bounce-limit"]
    assert statuses(session) == [Status.BOUNCED, Status.BOUNCED]
    assert suppressions.is_suppressed(session, READER)


@pytest.mark.parametrize(
    ("fixture", "return_path", "result"),
    [
        pytest.param("postfix_hard", "forged", "forged", id="forged VERP"),
        pytest.param("postfix_hard", "unknown", "unknown-delivery", id="unknown delivery"),
        pytest.param("postfix_hard", "bounces@example.org", "no-return-path", id="no VERP"),
        pytest.param("malformed_dsn", "genuine", "not-a-report", id="malformed DSN"),
        pytest.param("auto_reply", "genuine", "not-a-report", id="out-of-office reply"),
        pytest.param("delivered", "genuine", "not-a-report", id="success notice"),
        pytest.param("arf_not_spam", "genuine", "not-a-report", id="not-spam feedback"),
    ],
)
def test_reports_we_cannot_read_or_trust_change_nothing_and_are_filed_as_ignored(
    session, world, verp, maildir, fixture, return_path, result
):
    root, settings = maildir
    genuine = verp.for_delivery(world["delivery"].id, SENDER)
    path = {
        "genuine": genuine,
        "forged": genuine.replace("+d", "+d9"),
        "unknown": verp.for_delivery(world["delivery"].id + 1000, SENDER),
    }.get(return_path, return_path)
    deliver(root, "msg1", load(fixture, path, READER))
    before = state(session)

    outcome = mailboxes.poll(settings).outcomes[0]

    assert (outcome.result, outcome.applied) == (result, False)
    assert outcome.reason
    assert state(session) == before
    assert [p.name for p in (root / ".ignored" / "cur").iterdir()] == ["msg1:2,S"]


def test_a_message_is_put_back_for_the_next_poll_when_handling_it_fails(tmp_path):
    root = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    deliver(root, "m1", b"whatever")

    def database_down(raw):
        raise ConnectionError("database unreachable")

    with pytest.raises(ConnectionError):
        mailboxes.poll_maildir(root, database_down)
    assert [p.name for p in (root / "new").iterdir()] == ["m1"]
    assert list((root / "tmp").iterdir()) == []


def test_a_confirm_mail_goes_out_with_its_own_return_path_signed_and_its_bounce_fails_it(
    session, settings, smtp_server, tmp_path, monkeypatch
):
    key = tmp_path / "dkim.pem"
    generate_private_key(key)
    settings = configure(monkeypatch, dkim_selector="mail", dkim_private_key_path=str(key))
    newsletters.create_newsletter(session, "weekly", "Weekly News", SENDER)
    note_id = subs.subscribe(session, email=READER, newsletter="weekly").notification_ids[0]
    session.commit()

    renderer = EmailRenderer(settings.email_templates)
    assert notices.send_notice(session, settings, renderer, note_id) == "sent"

    [received] = smtp_server.received
    verp = return_paths(settings)
    assert verp.parse(received.mail_from) == VerpTag("n", note_id)
    record = txt_record_value(key.read_bytes()).encode()
    assert dkim.verify(
        received.data,
        dnsfunc=lambda name, timeout=5: (
            record if name.rstrip(b".") == b"mail._domainkey.example.org" else None
        ),
    )

    outcome = outcomes.handle_raw(session, verp, load("postfix_hard", received.mail_from, READER))
    session.commit()
    assert (outcome.result, outcome.notification_id) == ("hard-bounce", note_id)
    session.expire_all()
    note = session.get(Notification, note_id)
    assert note.status == "failed" and "5.1.1" in note.last_error
    assert statuses(session) == [Status.BOUNCED]


def test_the_cli_polls_the_mailbox_and_reports_each_outcome(session, world, verp, maildir):
    from mailer.cli import main

    root, _ = maildir
    deliver(root, "a", load("postfix_hard", verp.for_delivery(world["delivery"].id, SENDER)))
    deliver(root, "b", load("auto_reply", verp.for_delivery(world["delivery"].id, SENDER)))

    result = CliRunner().invoke(main, ["bounces", "poll"])

    assert result.exit_code == 0, result.output
    assert "2 report(s): 1 applied, 1 ignored" in result.output
    assert "hard-bounce" in result.output and "not-a-report" in result.output


def test_the_cli_reads_one_report_from_stdin(session, world, verp):
    from mailer.cli import main

    raw = load("arf_complaint", verp.for_delivery(world["delivery"].id, SENDER), READER)
    result = CliRunner().invoke(main, ["bounces", "process"], input=raw)
    assert result.exit_code == 0, result.output
    assert '"result": "complaint"' in result.output
    assert statuses(session) == [Status.COMPLAINED, Status.COMPLAINED]


def test_the_cli_says_what_to_set_when_there_is_no_mailbox(settings):
    from mailer.cli import main

    result = CliRunner().invoke(main, ["bounces", "poll"])
    assert result.exit_code != 0 and "MAILER_BOUNCE_MAILDIR" in result.output


# -- the same mailbox over IMAP, against a real server (a private Dovecot) -----------------


@pytest.fixture(scope="module")
def imap_server():
    from tests.conftest import service_missing
    from tests.imap import DovecotUnavailable, start_dovecot

    try:
        with start_dovecot() as server:
            yield server
    except DovecotUnavailable as exc:  # raised only while it starts, before the yield
        service_missing("Dovecot (a real IMAP server)", exc)


@pytest.fixture
def imap(imap_server, request):
    """The module's server, with a mailbox of this test's own (a name with a space)."""
    import dataclasses

    return dataclasses.replace(imap_server, mailbox=f"Bounces {request.node.name}")


def test_a_hard_bounce_in_the_imap_mailbox_suppresses_the_reader_and_is_removed(
    session, world, verp, imap, monkeypatch
):
    genuine = verp.for_delivery(world["delivery"].id, SENDER)
    imap.append(load("postfix_hard", genuine, READER))
    imap.append(load("auto_reply", genuine, READER))
    settings = configure(monkeypatch, bounce_imap_url=imap.url())

    result = mailboxes.poll(settings)

    assert [o.result for o in result.outcomes] == ["hard-bounce", "not-a-report"]
    assert statuses(session) == [Status.BOUNCED, Status.BOUNCED]
    assert session.get(Delivery, world["delivery"].id).status is DeliveryStatus.FAILED
    assert imap.messages() == []


def test_a_report_whose_handling_fails_stays_and_the_one_before_it_is_not_counted_twice(
    session, world, verp, imap, monkeypatch
):
    """Three soft bounces in a row bounce the reader: the third, not a re-read first."""
    settings = configure(monkeypatch, bounce_imap_url=imap.url(), soft_bounce_limit="3")
    raw = load("exim_delayed", verp.for_delivery(world["delivery"].id, SENDER), READER)
    for _ in range(3):
        imap.append(raw)
    handle = mailboxes.handler_for(settings)
    calls = []

    def database_down_on_the_second(report: bytes) -> outcomes.Outcome:
        calls.append(report)
        if len(calls) == 2:
            raise ConnectionError("database unreachable")
        return handle(report)

    with pytest.raises(ConnectionError):
        mailboxes.poll_imap(
            settings.bounce_imap_url.get_secret_value(), database_down_on_the_second
        )
    assert len(imap.messages()) == 2
    session.expire_all()
    assert session.get(Subscription, world["weekly"].id).soft_bounces == 1

    again = mailboxes.poll(settings)

    assert [o.result for o in again.outcomes] == ["soft-bounce", "soft-bounce-limit"]
    assert statuses(session) == [Status.BOUNCED, Status.BOUNCED]
    assert imap.messages() == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(lambda s: s.url(password="wrong"), "AUTHENTICATIONFAILED", id="password"),
        pytest.param(lambda s: s.url("No Such Box"), "No Such Box", id="mailbox"),
    ],
)
def test_a_wrong_password_or_mailbox_is_a_clear_error_and_leaves_the_reports(
    session, world, verp, imap, monkeypatch, url, message
):
    from mailer.cli import main

    imap.append(load("postfix_hard", verp.for_delivery(world["delivery"].id, SENDER), READER))
    configure(monkeypatch, bounce_imap_url=url(imap))
    before = state(session)

    result = CliRunner().invoke(main, ["bounces", "poll"])

    assert result.exit_code == 1 and "cannot read the bounce mailbox" in result.output
    assert message in result.output and result.exception.__class__ is SystemExit
    assert state(session) == before
    assert len(imap.messages()) == 1
