"""Confirm and welcome mails against a real SMTP server: replies decide the record."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailer.mail.rendering import EmailRenderer
from mailer.models import Notification, Status, Subscription
from mailer.readers import notices
from mailer.readers import subscriptions as subs
from tests.helpers.notices import queue_confirm
from tests.helpers.verdicts import address_state
from tests.smtp import start_smtp_server


@pytest.fixture
def renderer(settings):
    return EmailRenderer(settings.email_templates)


def test_unicode_address_is_delivered_with_smtputf8(session, settings, renderer, smtp_server):
    note_id = queue_confirm(session, "читатель@пример.рф")
    assert notices.send_notice(session, settings, renderer, note_id) == "sent"
    [received] = smtp_server.received
    assert received.rcpt_tos == ["читатель@пример.рф"]
    assert received.message["To"] == "читатель@пример.рф"


def test_unicode_domain_is_sent_as_punycode(session, settings, renderer, smtp_server):
    note_id = queue_confirm(session, "reader@bücher.de")
    assert notices.send_notice(session, settings, renderer, note_id) == "sent"
    assert smtp_server.received[0].rcpt_tos == ["reader@xn--bcher-kva.de"]


def test_temporary_refusal_keeps_the_notice_queued_for_retry(
    session, settings, renderer, smtp_server
):
    note_id = queue_confirm(session, "later@example.org")
    smtp_server.handler.script.on_rcpt = lambda addr: "451 4.7.1 try again later"
    with pytest.raises(notices.TemporaryFailure, match="451"):
        notices.send_notice(session, settings, renderer, note_id)
    session.expire_all()
    note = session.get(Notification, note_id)
    assert (note.status, note.attempts) == ("queued", 1) and "451" in note.last_error
    smtp_server.handler.script.on_rcpt = None
    assert notices.send_notice(session, settings, renderer, note_id) == "sent"
    assert len(smtp_server.received) == 1


def test_permanent_refusal_marks_the_notice_failed(session, settings, renderer, smtp_server):
    note_id = queue_confirm(session, "nobody@example.org")
    smtp_server.handler.script.on_rcpt = lambda addr: "550 5.1.1 no such user"
    assert notices.send_notice(session, settings, renderer, note_id) == "failed"
    assert "550" in session.get(Notification, note_id).last_error
    assert smtp_server.received == []


def test_a_550_to_a_confirm_mail_ends_the_address_as_a_bounce_report_would(
    session, settings, renderer, smtp_server
):
    """The same verdict as a 550 to a digest (`Reply.condemns_address`): the address is
    suppressed as a hard bounce and its subscriptions end, so no retry mails it again."""
    note_id = queue_confirm(session, "gone@example.org")
    smtp_server.handler.script.on_rcpt = lambda addr: "550 5.1.1 no such user"
    assert notices.send_notice(session, settings, renderer, note_id) == "failed"
    state = address_state(session, "gone@example.org")
    assert state.suppression == "hard-bounce"
    assert state.subscriptions == [("n", Status.BOUNCED)]


def test_our_relay_s_own_553_to_a_confirm_mail_is_no_verdict_on_the_address(
    session, settings, renderer
):
    """A relay without SMTPUTF8 is our shortcoming, not the reader's: failed, not suppressed."""
    note_id = queue_confirm(session, "юзер@пример.рф")
    server = start_smtp_server(enable_SMTPUTF8=False)
    try:
        configured = settings.model_copy(update={"smtp_url": f"smtp://127.0.0.1:{server.port}"})
        assert notices.send_notice(session, configured, renderer, note_id) == "failed"
    finally:
        server.stop()
    state = address_state(session, "юзер@пример.рф")
    assert state.suppression is None
    assert state.subscriptions == [("n", Status.PENDING)]


def test_unreachable_server_keeps_the_notice_queued(session, settings, renderer, smtp_server):
    note_id = queue_confirm(session, "a@example.org")
    smtp_server.stop()
    with pytest.raises(notices.TemporaryFailure):
        notices.send_notice(session, settings, renderer, note_id)
    session.expire_all()
    assert session.get(Notification, note_id).status == "queued"


def test_notice_sent_once_even_when_its_task_runs_twice(session, settings, renderer, smtp_server):
    note_id = queue_confirm(session, "twice@example.org")
    assert notices.send_notice(session, settings, renderer, note_id) == "sent"
    assert notices.send_notice(session, settings, renderer, note_id) == "not-claimed"
    assert len(smtp_server.received) == 1


def test_confirm_for_a_reader_who_unsubscribed_meanwhile_is_not_sent(
    session, settings, renderer, smtp_server
):
    note_id = queue_confirm(session, "gone@example.org")
    sub = session.scalars(select(Subscription)).one()
    subs.change_status(session, sub, Status.UNSUBSCRIBED, source="test")
    session.commit()
    assert notices.send_notice(session, settings, renderer, note_id) == "skipped"
    assert smtp_server.received == []


def test_lost_notice_is_found_by_the_sweep(session, settings):
    from datetime import timedelta

    note_id = queue_confirm(session, "lost@example.org")
    note = session.get(Notification, note_id)
    assert notices.due_notices(session, older_than=120, max_attempts=6) == []
    note.created_at -= timedelta(minutes=5)
    session.commit()
    assert notices.due_notices(session, older_than=120, max_attempts=6) == [note_id]


def test_every_notice_kind_has_its_own_context_and_its_templates_render_with_it(
    session, settings, renderer
):
    """One builder per kind (warehouse's model); the templates are strict, so a key a
    kind's template wants and its builder lacks fails here, not in a reader's inbox."""
    assert set(notices.CONTEXTS) == set(notices.VALID_FOR)
    note = session.get(Notification, queue_confirm(session, "reader@example.org"))
    for kind in notices.CONTEXTS:
        note.kind = kind
        _, data, _ = notices.build_notice(session, settings, renderer, note)
        text = data.decode("utf-8", "replace")
        assert "reader@example.org" in text
        assert ("/confirm/" in text) is (kind == "confirm")
        assert "List-Unsubscribe: <" in text
