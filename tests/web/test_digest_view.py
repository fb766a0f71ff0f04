"""`/digest/{id}` over real HTTP: the edition as sent, with nothing about any reader."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from mailer.models import DigestVariant
from tests.helpers.editions import (
    add_article,
    add_reader,
    hrefs,
    make_newsletter,
    parts,
    send_edition_now,
)


@pytest.fixture
def sent_edition(session, settings, smtp_server):
    nl = make_newsletter(session)
    add_reader(session, nl, "secret-reader@example.org", topics=["Python"])
    add_reader(session, nl, "other-reader@example.org")
    add_article(session, nl, "Python news", topics=["Python"])
    add_article(session, nl, "General news", hours_ago=2)
    session.commit()
    return send_edition_now(session, settings, nl)


def test_view_in_browser_link_shows_that_readers_variant_without_their_details(
    live_server, sent_edition, smtp_server
):
    [mail] = smtp_server.to("secret-reader@example.org")
    _, page = parts(mail.message)
    view = next(u for u in hrefs(page) if "/digest/" in u).replace("&amp;", "&")
    response = httpx.get(view)
    assert response.status_code == 200
    body = response.text
    assert "Python news" in body and "General news" not in body
    assert "secret-reader" not in body and "other-reader" not in body
    assert "/unsubscribe/" not in body and "/preferences/" not in body
    assert "__MAILER_" not in body
    assert f"{live_server}/subscribe/news" in body


def test_edition_without_variant_key_shows_a_variant(live_server, sent_edition, session):
    response = httpx.get(f"{live_server}/digest/{sent_edition}")
    assert response.status_code == 200 and "news" in response.text
    keys = session.scalars(select(DigestVariant.key)).all()
    assert len(keys) == 2


@pytest.mark.parametrize("path", ["/digest/999", "/digest/1?v=nope", "/digest/1?v=../../etc"])
def test_unknown_edition_or_variant_is_not_found(live_server, sent_edition, path):
    response = httpx.get(f"{live_server}{path}")
    assert response.status_code == 404
    assert "secret-reader" not in response.text
