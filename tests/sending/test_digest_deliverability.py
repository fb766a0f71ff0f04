"""Digest mail leaves with its own bounce address and, when configured, a DKIM signature;
a 250 clears the reader's run of soft bounces."""

from __future__ import annotations

import dkim

from mailer.mail import verp
from mailer.mail.dkim import generate_private_key, txt_record_value
from mailer.models import Delivery, Subscription
from tests.conftest import configure
from tests.helpers.editions import add_article, add_reader, make_newsletter, send_edition_now


def send_edition(session, settings, soft_bounces=0):
    nl = make_newsletter(session)
    reader = add_reader(session, nl, "reader@example.org")
    reader.soft_bounces = soft_bounces
    add_article(session, nl, "Story", hours_ago=1)
    session.commit()
    send_edition_now(session, settings, nl)
    return reader


def test_digest_goes_out_with_a_return_path_naming_its_delivery_and_a_signature_that_verifies(
    session, settings, smtp_server, tmp_path, monkeypatch
):
    key = tmp_path / "dkim.pem"
    generate_private_key(key)
    settings = configure(monkeypatch, dkim_selector="mail", dkim_private_key_path=str(key))
    send_edition(session, settings)

    [received] = smtp_server.received
    row = session.query(Delivery).one()
    assert verp.return_paths(settings).parse(received.mail_from) == verp.VerpTag("d", row.id)
    domain = received.mail_from.rpartition("@")[2]
    record = txt_record_value(key.read_bytes()).encode()
    assert dkim.verify(
        received.data,
        dnsfunc=lambda name, timeout=5: (
            record if name.rstrip(b".") == f"mail._domainkey.{domain}".encode() else None
        ),
    )
    assert b"list-unsubscribe-post" in received.data.split(b"\r\n\r\n")[0].lower()


def test_digest_without_dkim_settings_goes_out_unsigned(session, settings, smtp_server):
    send_edition(session, settings)
    [received] = smtp_server.received
    assert b"DKIM-Signature" not in received.data


def test_an_accepted_digest_clears_the_readers_run_of_soft_bounces(session, settings, smtp_server):
    reader = send_edition(session, settings, soft_bounces=2)
    assert len(smtp_server.received) == 1
    session.expire_all()
    assert session.get(Subscription, reader.id).soft_bounces == 0
