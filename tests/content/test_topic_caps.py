"""Topics from outside text are capped per feed and per newsletter, and the cap says so.

A real feed over HTTP with 200 items of 25 categories each used to make 4,000
topics (and a 360 KB subscribe page); a real push over the HTTP API likewise.
Every article is still stored, with the topics that exist.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from mailer.content import feeds
from mailer.models import Article, Feed, Topic
from tests.conftest import configure
from tests.fixtures.feedserver import FeedServer
from tests.helpers.editions import make_newsletter

AUTH = {"Authorization": "Bearer test-api-token"}


def flood(items: int, categories: int, prefix: str) -> bytes:
    entries = "".join(
        f"<item><title>{prefix} story {i}</title><link>https://example.org/{prefix}/{i}</link>"
        f"<guid>{prefix}-{i}</guid>"
        + "".join(f"<category>{prefix} tag {i}-{c}</category>" for c in range(categories))
        + "</item>"
        for i in range(items)
    )
    head = '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
    return f"{head}{entries}</channel></rss>".encode()


def topics(session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Topic)) or 0


def test_a_flooding_feed_makes_at_most_its_cap_of_topics_and_says_so(
    session, settings, monkeypatch, live_server
):
    settings = configure(monkeypatch, fetch_allow_private="true")  # the feed is on loopback
    nl = make_newsletter(session)
    server = FeedServer()
    try:
        feed = feeds.add_feed(session, nl, server.serve("/flood.xml", flood(200, 25, "a")))
        session.commit()
        report = feeds.poll(settings, feed.id)
    finally:
        server.stop()

    assert report.status == "ok" and report.created == 200
    assert topics(session) == 50  # was 4,000
    assert settings.max_topics_per_feed == 50
    assert session.scalar(select(func.count()).select_from(Article)) == 200
    last_error = session.scalar(select(Feed.last_error))
    assert last_error is not None and "MAILER_MAX_TOPICS_PER_FEED=50" in last_error
    assert "topic cap reached" in report.describe()
    page = httpx.get(f"{live_server}/subscribe/{nl.slug}", timeout=10)
    assert page.status_code == 200 and len(page.content) < 40_000


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before `settings` (and so the live server's app) is made."""
    monkeypatch.setenv("MAILER_MAX_TOPICS_PER_FEED", "10")
    monkeypatch.setenv("MAILER_MAX_TOPICS_PER_NEWSLETTER", "15")
    monkeypatch.setenv("MAILER_FETCH_ALLOW_PRIVATE", "true")  # the feeds are on loopback


def test_feeds_and_pushes_together_stop_at_the_newsletters_cap(
    small_caps, session, settings, live_server
):
    assert (settings.max_topics_per_feed, settings.max_topics_per_newsletter) == (10, 15)
    nl = make_newsletter(session)
    server = FeedServer()
    try:
        first = feeds.add_feed(session, nl, server.serve("/a.xml", flood(20, 3, "a")))
        second = feeds.add_feed(session, nl, server.serve("/b.xml", flood(20, 3, "b")))
        session.commit()
        feeds.poll(settings, first.id)
        assert topics(session) == 10  # the first feed's cap
        feeds.poll(settings, second.id)
    finally:
        server.stop()
    assert topics(session) == 15  # the newsletter's

    pushed = httpx.post(
        f"{live_server}/api/articles",
        json={
            "newsletter": nl.slug,
            "url": "https://example.org/pushed",
            "title": "Pushed",
            "topics": ["Brand new", "a tag 0-0"],
        },
        headers=AUTH,
        timeout=10,
    )
    assert pushed.status_code == 200, pushed.text
    body = pushed.json()
    assert body["created"] == 1
    assert body["topics_not_created"] == [{"newsletter": nl.slug, "topic": "Brand new"}]
    assert "MAILER_MAX_TOPICS_PER_NEWSLETTER=15" in body["warning"]
    session.expire_all()
    stored = session.scalars(select(Article).where(Article.title == "Pushed")).one()
    assert [t.name for t in stored.topics] == ["a tag 0-0"]  # an existing topic still applies
    assert topics(session) == 15
