"""Headers as a reader's mail system parses them, over a real HTTP API and SMTP server.

Internationalised domains: a newsletter sent from `news@bücher.example` goes
out, and the sender's domain is punycode
in From, Message-ID, List-Id and the envelope; a reader at an IDN domain with
an ASCII local part gets a punycode `To` (never an RFC 2047 word inside the
address). A sender we could not write is refused when the newsletter is made,
and an edition whose messages can't be built ends instead of retrying for ever.
`List-Id` carries the newsletter's name as a proper phrase, whatever it holds.
"""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes, policy

import httpx
from click.testing import CliRunner
from sqlalchemy import select, update

from mailer.cli import main
from mailer.editions import close, prepare, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import Delivery, DeliveryStatus, Digest, Frequency, Newsletter, utcnow
from mailer.sending import loop, sweeps
from tests.conftest import configure
from tests.helpers.editions import add_article, add_reader, make_newsletter

AUTH = {"Authorization": "Bearer test-api-token"}
PUNY = "xn--bcher-kva.example"


def prepare_and_send(session, settings, nl, *, now=None) -> int:
    edition = schedule.create_now(session, nl, Frequency.DAILY, now=now)
    prepare.prepare(session, settings, EmailRenderer(settings.email_templates), edition.id)
    session.commit()
    for lo, hi in prepare.open_ranges(session, edition.id, 1000):
        loop.send_range(session, settings, edition.id, lo, hi)
    return edition.id


def test_an_idn_sender_and_reader_go_out_in_punycode(session, settings, smtp_server, live_server):
    made = httpx.post(
        f"{live_server}/api/newsletters",
        json={
            "slug": "buecher",
            "name": "Bücher, täglich",
            "sender": "Bücher <news@bücher.example>",
        },
        headers=AUTH,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    nl = session.scalars(select(Newsletter)).one()
    add_reader(session, nl, "leser@bücher.example")
    add_article(session, nl, "Neue Bücher")
    session.commit()

    digest_id = prepare_and_send(session, settings, nl)

    assert session.scalar(select(Delivery.status).where(Delivery.digest_id == digest_id)) == (
        DeliveryStatus.SENT
    )
    (mail,) = smtp_server.received
    assert mail.mail_from.endswith(f"@{PUNY}") and mail.rcpt_tos == [f"leser@{PUNY}"]
    head = mail.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and b"=?utf-8?q?b=C3=BCcher" not in head.lower()
    msg = message_from_bytes(mail.data, policy=policy.default)
    assert msg["To"] == f"leser@{PUNY}"
    (sender,) = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Bücher", f"news@{PUNY}")
    assert msg["Message-ID"].endswith(f"@{PUNY}>")
    assert msg["List-Id"] == f"Bücher, täglich <buecher.{settings.base_host}>"
    assert f"mailto:news@{PUNY}" in msg["List-Unsubscribe"]


def test_a_sender_that_cannot_be_written_is_refused_by_the_api_and_the_cli(
    session, settings, live_server
):
    for sender in ("News <nöws@example.org>", "News <news@bü_cher.example>"):
        answer = httpx.post(
            f"{live_server}/api/newsletters",
            json={"slug": "news", "name": "News", "sender": sender},
            headers=AUTH,
            timeout=10,
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", "sender"]
        result = CliRunner().invoke(
            main, ["newsletter", "create", "news", "--name", "News", "--from", sender]
        )
        assert result.exit_code != 0 and "sender" in result.output.lower()
    assert session.scalars(select(Newsletter)).all() == []


def test_an_edition_whose_messages_cannot_be_built_ends_instead_of_retrying_for_ever(
    session, settings, smtp_server, monkeypatch
):
    """A sender written before senders were checked (here: straight into the table) can't
    be encoded: each row is deferred with backoff, then failed on record; the edition
    ends. Before, the rows stayed queued and every tick sent the batch again."""
    settings = configure(monkeypatch, send_max_attempts="3", send_retry_base="60")
    nl = make_newsletter(session)
    add_reader(session, nl, "a@example.org")
    add_reader(session, nl, "b@example.org")
    add_article(session, nl, "Story")
    session.execute(
        update(Newsletter).where(Newsletter.id == nl.id).values(sender="N <n@bü_cher.example>")
    )
    session.commit()

    now = utcnow()
    digest_id = prepare_and_send(session, settings, nl, now=now)
    for attempt in range(1, 4):
        rows = session.scalars(select(Delivery).where(Delivery.digest_id == digest_id)).all()
        assert {(r.status, r.attempts) for r in rows} == {
            (DeliveryStatus.DEFERRED if attempt < 3 else DeliveryStatus.FAILED, attempt)
        }
        assert all("could not be built" in (r.smtp_reply or "") for r in rows)
        later = now + timedelta(hours=attempt)
        for edition, lo, hi in sweeps.due_ranges(session, settings, later):
            loop.send_range(session, settings, edition, lo, hi, clock=lambda t=later: t)
        session.expire_all()
    close.close_finished(session)
    session.commit()
    assert session.get_one(Digest, digest_id).status == "done"
    assert sweeps.due_ranges(session, settings, now + timedelta(days=1)) == []
    assert smtp_server.received == []


def test_list_id_quotes_a_name_with_specials_so_it_parses_back(session, settings, smtp_server):
    nl = make_newsletter(session)
    nl.name = 'Weekly "Picks", <Ed.> (Mon)'
    add_reader(session, nl, "ann@example.org")
    add_article(session, nl, "Story")
    session.commit()
    prepare_and_send(session, settings, nl)

    (mail,) = smtp_server.received
    raw = mail.data.split(b"\r\nList-Id: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert raw == f'"Weekly \\"Picks\\", <Ed.> (Mon)" <news.{settings.base_host}>'
    phrase = raw.removesuffix(f" <news.{settings.base_host}>")
    parsed = policy.default.header_factory("To", f"{phrase} <x@example.org>")
    assert [a.display_name for a in parsed.addresses] == [nl.name]
