"""The seed article through every way an article comes (a feed item's content:encoded,
the API's content_html, an imported page) and out in the digest actually mailed; and
`mailer article show` / `GET /api/articles/{id}` showing what the source sent.

Real parts: PostgreSQL, a real HTTP server for the feed and the page, the FastAPI
app, a Celery worker on Redis, and an SMTP server that receives the digest.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailer.config import Settings
from mailer.content import feeds
from mailer.db import session_scope
from mailer.models import Article, utcnow
from mailer.readers.newsletters import get_newsletter
from mailer.web.app import create_app
from tests.fixtures.feedserver import FeedServer
from tests.helpers.cli import run
from tests.helpers.editions import add_article, add_reader, make_newsletter, parts
from tests.helpers.seed import (
    SEED_FURNITURE,
    SEED_LEAD,
    SEED_TITLE,
    seed_feed,
    seed_html,
    seed_page,
)
from tests.smtp import SMTPServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("allow_private_fetch")]

AUTH = {"Authorization": "Bearer test-api-token"}
READER = "reader@example.org"
STORY = "https://news.example.org/2024/05/31/tensions-rise/"


def minutes_ago() -> datetime:
    """A published time inside the edition's window, which ends at the current minute."""
    return utcnow() - timedelta(minutes=10)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def newsletter(settings: Settings) -> str:
    with session_scope(settings.database) as session:
        nl = make_newsletter(session)
        add_reader(session, nl, READER)
        return nl.slug


def arrive_by_feed(settings: Settings, slug: str, server: FeedServer) -> None:
    url = server.serve("/feed.xml", seed_feed(STORY, minutes_ago()))
    with session_scope(settings.database) as session:
        feed_id = feeds.add_feed(session, get_newsletter(session, slug), url).id
    report = feeds.poll(settings, feed_id)
    assert report.created == 1, report.describe()


def arrive_by_api(client: TestClient, slug: str) -> None:
    body = {
        "newsletter": slug,
        "url": STORY,
        "title": SEED_TITLE,
        "content_html": seed_html(),
        "published_at": minutes_ago().isoformat(),
    }
    response = client.post("/api/articles", json=body, headers=AUTH)
    assert response.status_code == 200, response.text


def arrive_as_page(slug: str, server: FeedServer) -> None:
    url = server.serve(
        "/story", seed_page(STORY, minutes_ago()), content_type="text/html; charset=utf-8"
    )
    result = run("article", "import", url, "--newsletter", slug)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", ["feed", "api", "page"])
def test_the_seed_is_mailed_with_its_title_and_lead_and_no_furniture(
    path: str,
    settings: Settings,
    newsletter: str,
    server: FeedServer,
    client: TestClient,
    smtp_server: SMTPServer,
    celery_worker: object,
) -> None:
    if path == "feed":
        arrive_by_feed(settings, newsletter, server)
    elif path == "api":
        arrive_by_api(client, newsletter)
    else:
        arrive_as_page(newsletter, server)

    sent = run("digest", "send", newsletter, "--wait", "--timeout", "60")
    assert sent.exit_code == 0, sent.output
    [received] = smtp_server.to(READER)
    text, page = (" ".join(part.split()) for part in parts(received.message))  # lines wrap
    assert SEED_TITLE in text and html.escape(SEED_TITLE) in page
    assert SEED_LEAD in text and html.escape(SEED_LEAD, quote=False) in page
    for mailed in (text, page):
        assert "Search Close this search box" not in mailed
        for furniture in SEED_FURNITURE:
            assert furniture.lower() not in mailed.lower(), (path, furniture)


# -- what the source sent ------------------------------------------------------------------


def stored_id(settings: Settings) -> int:
    with session_scope(settings.database) as session:
        return session.scalars(select(Article.id)).one()


def test_article_show_prints_the_summary_and_with_raw_what_was_sent(
    settings: Settings, newsletter: str, client: TestClient
) -> None:
    arrive_by_api(client, newsletter)
    article_id = stored_id(settings)

    shown = run("article", "show", str(article_id))
    assert shown.exit_code == 0, shown.output
    assert SEED_LEAD in shown.output and "Close this search box" not in shown.output

    raw = run("article", "show", str(article_id), "--raw")
    assert raw.exit_code == 0, raw.output
    sent = raw.output.split("sent as summary:", 1)[1]
    assert "<p>Close this search box.</p>" in sent and "<p>Advertisement</p>" in sent
    removed = raw.output.split("removed by the cleaner:", 1)[1]
    for line in ("label: Search", "lead-in: Also Read:", "label: Share this article"):
        assert f"  - {line}" in removed


def test_article_show_says_when_the_source_was_not_kept(
    settings: Settings, newsletter: str
) -> None:
    with session_scope(settings.database) as session:
        nl = make_newsletter(session, "older")
        article_id = add_article(session, nl, "Stored before 0006").id
    result = run("article", "show", str(article_id), "--raw")
    assert result.exit_code == 0, result.output
    assert "About Stored before 0006." in result.output
    assert "what the source sent was not kept" in result.output


def test_article_show_of_an_unknown_article_is_a_clear_error(newsletter: str) -> None:
    result = run("article", "show", "999")
    assert result.exit_code == 1 and "There is no article 999." in result.output


def test_article_show_never_passes_escape_sequences_to_the_terminal(
    settings: Settings, newsletter: str, client: TestClient
) -> None:
    hostile = "<p>Set the title\x1b]0;pwned\x07 and colour \x1b[31mred\x9b0m \u202eevil.</p>"
    body = {"newsletter": newsletter, "url": STORY, "title": "T", "content_html": hostile}
    assert client.post("/api/articles", json=body, headers=AUTH).status_code == 200
    output = run("article", "show", str(stored_id(settings)), "--raw").output
    assert "Set the title" in output and "red" in output
    for control in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert control not in output


def test_the_api_shows_an_article_and_with_raw_what_was_sent(
    settings: Settings, newsletter: str, client: TestClient
) -> None:
    arrive_by_api(client, newsletter)
    article_id = stored_id(settings)

    plain = client.get(f"/api/articles/{article_id}", headers=AUTH)
    assert plain.status_code == 200, plain.text
    shown = plain.json()
    assert shown["summary"] == SEED_LEAD and shown["title"] == SEED_TITLE
    assert shown["raw_kept"] is True and shown["raw_content"] is None

    raw = client.get(f"/api/articles/{article_id}", params={"raw": "true"}, headers=AUTH).json()
    assert raw["raw_content"] == seed_html() and "Close this search box" in raw["raw_content"]
    assert "label: Search" in raw["removed"]

    assert client.get("/api/articles/999", headers=AUTH).status_code == 404
    assert client.get(f"/api/articles/{article_id}").status_code == 401
