"""The /outbox pages over a real sink: mail crosses SMTP, lands in the Maildir, shows in HTML."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mailer import config
from mailer.mail.sink import Outbox, free_port, start_sink
from mailer.web.app import create_app
from tests.conftest import configure, wait_for


@pytest.fixture
def sink_settings(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> Iterator[config.Settings]:
    monkeypatch.delenv("MAILER_SMTP_URL", raising=False)
    settings = configure(
        monkeypatch, database_url=sqlite_url, data_dir=str(tmp_path), sink_port=str(free_port())
    )
    assert settings.uses_sink
    controller = start_sink(settings.outbox_dir, settings.sink_host, settings.sink_port)
    yield settings
    controller.stop()
    config.get_settings.cache_clear()


@pytest.fixture
def client(sink_settings: config.Settings) -> Iterator[TestClient]:
    with TestClient(create_app(sink_settings)) as c:
        yield c


def send(settings: config.Settings, to: str, subject: str, *, html: str | None = None) -> None:
    msg = EmailMessage()
    msg["From"] = "Weekly <news@example.org>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg["List-Unsubscribe"] = "<https://example.org/unsubscribe/abc>"
    msg.set_content("Hello reader.\nRead on: https://example.org/articles/1\n")
    if html is not None:
        msg.add_alternative(html, subtype="html")
    with smtplib.SMTP(settings.sink_host, settings.sink_port, timeout=10) as smtp:
        smtp.send_message(msg)


def test_mail_sent_to_the_sink_is_listed_newest_first(
    sink_settings: config.Settings, client: TestClient
) -> None:
    outbox = Outbox(sink_settings.outbox_dir)
    send(sink_settings, "first@example.com", "First issue")
    wait_for(lambda: len(outbox.items()) == 1)
    time.sleep(0.01)  # distinct mtimes keep the order meaningful, not a timing assertion
    send(sink_settings, "second@example.com", "Second issue")
    wait_for(lambda: len(outbox.items()) == 2)

    page = client.get("/outbox")

    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    body = page.text
    assert "second@example.com" in body and "first@example.com" in body
    assert body.index("Second issue") < body.index("First issue")


def test_outbox_filters_by_recipient(sink_settings: config.Settings, client: TestClient) -> None:
    send(sink_settings, "alice@example.com", "For Alice")
    send(sink_settings, "bob@example.com", "For Bob")
    wait_for(lambda: len(Outbox(sink_settings.outbox_dir).items()) == 2)

    body = client.get("/outbox", params={"to": "alice@"}).text

    assert "For Alice" in body
    assert "For Bob" not in body


def test_a_mail_page_shows_headers_text_links_and_frames_the_html(
    sink_settings: config.Settings, client: TestClient
) -> None:
    html = '<p>Hello <b>reader</b> <a href="https://example.org/confirm/xyz">Confirm</a></p>'
    send(sink_settings, "reader@example.com", "Please confirm", html=html)
    (item,) = wait_for(lambda: Outbox(sink_settings.outbox_dir).items())

    page = client.get(f"/outbox/{item.key}")

    assert page.status_code == 200
    body = page.text
    assert "List-Unsubscribe" in body and "reader@example.com" in body
    assert "Hello reader." in body  # the text part
    assert 'href="https://example.org/confirm/xyz"' in body  # links, followable outside the frame
    assert 'href="https://example.org/unsubscribe/abc"' in body
    assert f'src="/outbox/{item.key}/html"' in body
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in body


def test_the_html_part_is_served_under_a_csp_that_allows_no_scripts(
    sink_settings: config.Settings, client: TestClient
) -> None:
    html = "<p>Hi</p><script>alert(1)</script>"
    send(sink_settings, "reader@example.com", "Scripted", html=html)
    (item,) = wait_for(lambda: Outbox(sink_settings.outbox_dir).items())

    raw = client.get(f"/outbox/{item.key}/html")

    assert raw.status_code == 200
    csp = raw.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "sandbox" in csp
    assert raw.headers["x-frame-options"] == "SAMEORIGIN"


def test_a_text_only_mail_has_no_html_route(
    sink_settings: config.Settings, client: TestClient
) -> None:
    send(sink_settings, "reader@example.com", "Plain")
    (item,) = wait_for(lambda: Outbox(sink_settings.outbox_dir).items())

    assert "no HTML part" in client.get(f"/outbox/{item.key}").text
    assert client.get(f"/outbox/{item.key}/html").status_code == 404


def test_an_unknown_mail_is_not_found(client: TestClient) -> None:
    assert client.get("/outbox/1700000000.M1P1Q1.nohost").status_code == 404
    assert client.get("/outbox/..%2f..%2fsecret.key").status_code == 404


def test_the_outbox_is_not_served_when_real_smtp_is_configured(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    settings = configure(
        monkeypatch,
        database_url=sqlite_url,
        data_dir=str(tmp_path),
        smtp_url="smtp://127.0.0.1:2525",
    )
    try:
        with TestClient(create_app(settings)) as c:
            assert c.get("/outbox").status_code == 404
    finally:
        config.get_settings.cache_clear()
