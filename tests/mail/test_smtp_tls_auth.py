"""Mail to a relay that wants what real ones want: TLS, and a login before MAIL.

aiosmtpd with a certificate from a test CA (trustme), trusted by the client
the way an operator's system CA store would be (SSL_CERT_FILE, which
`ssl.create_default_context` reads). The client side is the production
code: `transport.connect` through a notice and through a digest edition.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from sqlalchemy import select

from mailer.mail import transport
from mailer.mail.rendering import EmailRenderer
from mailer.models import Delivery, DeliveryStatus, Notification
from mailer.readers import notices
from mailer.sending import loop
from tests.conftest import configure
from tests.helpers.editions import sendable_edition
from tests.helpers.notices import queue_confirm
from tests.smtp import SMTPServer, password_check, start_smtp_server

# The implicit-TLS relay asks for AUTH without aiosmtpd's own TLS check (it can't see that
# TLS), and aiosmtpd warns about that combination.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

USER, PASSWORD = "mailer@example.org", "p@ss word:42"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusted(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test CA in the client's trust store, as the relay's CA is on a real host."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(params=["starttls", "implicit"])
def relay(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[tuple[SMTPServer, str]]:
    """A relay that refuses MAIL before TLS and a login; and the scheme to reach it by."""
    context = server_context(ca)
    tls: dict[str, Any] = (
        {"tls_context": context, "require_starttls": True}
        if request.param == "starttls"
        # Already encrypted from the first byte, which aiosmtpd's AUTH check can't see.
        else {"ssl_context": context, "auth_require_tls": False}
    )
    server = start_smtp_server(
        authenticator=password_check(USER, PASSWORD), auth_required=True, **tls
    )
    yield server, "smtp" if request.param == "starttls" else "smtps"
    server.stop()


def url(relay: tuple[SMTPServer, str], password: str = PASSWORD) -> str:
    server, scheme = relay
    return (
        f"{scheme}://{quote(USER, safe='')}:{quote(password, safe='')}@{server.host}:{server.port}"
    )


def test_a_notice_goes_over_tls_with_the_url_s_login(
    settings, session, relay, trusted, monkeypatch
):
    configured = configure(monkeypatch, smtp_url=url(relay))
    note_id = queue_confirm(session, "reader@example.com")

    status = notices.send_notice(
        session, configured, EmailRenderer(configured.email_templates), note_id
    )

    assert status == "sent"
    [received] = relay[0].received
    assert received.tls and received.login == USER
    assert received.rcpt_tos == ["reader@example.com"]


@pytest.mark.parametrize("relay", ["starttls"], indirect=True)
def test_a_digest_edition_goes_over_tls_with_a_login_once_a_connection(
    settings, session, relay, trusted, monkeypatch
):
    configured = configure(monkeypatch, smtp_url=url(relay))
    digest_id, lo, hi, _ = sendable_edition(session, configured, 12)

    result = loop.send_range(session, configured, digest_id, lo, hi)

    received = relay[0].received
    assert result.sent == 12 and len(received) == 12
    assert all(r.tls and r.login == USER for r in received)
    assert len({r.peer for r in received}) == 1  # one connection, one handshake, one login
    assert Counter(r.rcpt_tos[0] for r in received).most_common(1)[0][1] == 1


def test_a_wrong_password_is_a_clear_error_and_the_notice_waits_for_a_retry(
    settings, session, relay, trusted, monkeypatch
):
    configured = configure(monkeypatch, smtp_url=url(relay, password="wrong"))
    note_id = queue_confirm(session, "reader@example.com")

    with pytest.raises(notices.TemporaryFailure, match="535"):
        notices.send_notice(session, configured, EmailRenderer(configured.email_templates), note_id)

    session.expire_all()
    note = session.get_one(Notification, note_id)
    assert note.status == "queued" and "cannot connect to SMTP server" in note.last_error
    assert relay[0].received == []


@pytest.mark.parametrize("relay", ["starttls"], indirect=True)
def test_an_untrusted_certificate_sends_nothing_and_leaves_the_edition_queued(
    settings, session, relay, monkeypatch
):
    """No test CA in the trust store: the relay could be anyone, so no login and no mail."""
    configured = configure(monkeypatch, smtp_url=url(relay))
    digest_id, lo, hi, _ = sendable_edition(session, configured, 3)

    with pytest.raises(loop.TemporaryFailure, match="CERTIFICATE_VERIFY_FAILED"):
        loop.send_range(session, configured, digest_id, lo, hi)

    session.expire_all()
    rows = session.scalars(select(Delivery).where(Delivery.digest_id == digest_id)).all()
    assert {r.status for r in rows} == {DeliveryStatus.QUEUED}
    assert relay[0].received == []


def test_connect_says_which_server_refused_the_login(relay, trusted):
    with pytest.raises(transport.ConnectionLost, match=r"127\.0\.0\.1: \(535"):
        transport.connect(url(relay, password="wrong"), timeout=5)
