"""Polling real feeds from a real local HTTP server into PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from mailer.config import Settings
from mailer.content import feeds
from mailer.content.articles import dedupe_articles
from mailer.db import session_scope
from mailer.models import Article, Feed, Newsletter, utcnow
from mailer.readers.newsletters import create_newsletter
from tests.conftest import configure
from tests.fixtures.feedserver import FeedServer, fixture

# The test servers are on 127.0.0.1: these fetches are allowed to go there.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private_fetch")]


@pytest.fixture
def cfg(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Small limits so the timeout and size-cap cases are quick."""
    return configure(monkeypatch, feed_timeout="1", feed_max_bytes=str(64 * 1024))


@pytest.fixture
def newsletter(cfg: Settings) -> str:
    with session_scope(cfg.database) as session:
        create_newsletter(session, "news", "News", "News <news@example.com>")
    return "news"


def add(cfg: Settings, url: str, *, topics: list[str] | None = None, slug: str = "news") -> int:
    with session_scope(cfg.database) as session:
        nl = session.scalar(select(Newsletter).where(Newsletter.slug == slug))
        assert nl is not None
        return feeds.add_feed(session, nl, url, topics=topics, settings=cfg).id


def articles(cfg: Settings, feed_id: int | None = None) -> list[Article]:
    with session_scope(cfg.database) as session:
        query = select(Article).order_by(Article.id)
        if feed_id is not None:
            query = query.where(Article.source == f"feed:{feed_id}")
        found = list(session.scalars(query))
        for a in found:
            _ = a.topics  # load before the session closes
        return found


def feed_row(cfg: Settings, feed_id: int) -> Feed:
    with session_scope(cfg.database) as session:
        feed = session.get(Feed, feed_id)
        assert feed is not None
        return feed


# -- good feeds -------------------------------------------------------------------------


def test_rss_with_cyrillic_and_emoji_is_stored_intact(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    url = server.serve("/ru.xml", fixture("feeds/rss_unicode.xml"), etag='"v1"')
    feed_id = add(cfg, url, topics=["World"])
    report = feeds.poll(cfg, feed_id)
    assert (report.status, report.created) == ("ok", 2)
    first, second = articles(cfg, feed_id)
    assert first.title == "Киев получил разрешение 🚀"
    assert first.summary == "Первый абзац статьи о решении США. Второе предложение здесь."
    assert first.published_at == datetime(2024, 5, 31, 6, 15, tzinfo=UTC)
    assert sorted(t.name for t in first.topics) == ["Ukraine-Russia war", "World", "Мир"]
    assert first.image_url == "https://cdn.example.org/kyiv.jpg"
    assert second.title == "Emoji 🎉 and ümlauts — “quotes”"
    assert second.summary == "A lead with bold text 😀."
    row = feed_row(cfg, feed_id)
    assert row.title == "Новости 🌍 World" and row.etag == '"v1"' and row.error_count == 0


def test_relative_links_are_made_absolute_against_the_feed_url(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    url = server.serve("/dir/ru.xml", fixture("feeds/rss_unicode.xml"))
    feed_id = add(cfg, url)
    feeds.poll(cfg, feed_id)
    first = articles(cfg, feed_id)[0]
    base = server.url("")
    assert first.url == f"{base}/ru/2024/05/31/kyiv-permission"  # utm_source dropped too
    assert f'href="{base}/sources/reuters"' in first.content_html
    assert f'src="{base}/dir/img/map.png"' in first.content_html


def test_atom_feed_is_read_with_xml_base_and_updated_only_dates(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    url = server.serve("/atom", fixture("feeds/atom.xml"), content_type="application/atom+xml")
    feed_id = add(cfg, url)
    assert feeds.poll(cfg, feed_id).created == 2
    first, second = articles(cfg, feed_id)
    assert first.title == "Atom & entries" and first.author == "Jo Writer"
    assert first.url == "https://blog.example.com/posts/first-post"
    assert first.published_at == datetime(2024, 6, 1, 6, 30, tzinfo=UTC)
    assert 'href="https://blog.example.com/about"' in first.content_html
    assert [t.name for t in first.topics] == ["Energy"]
    assert second.published_at == datetime(2024, 6, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("name", ["rss10.rdf", "rss091.xml"])
def test_rss_1_0_and_0_91_feeds_are_read(
    cfg: Settings, newsletter: str, server: FeedServer, name: str
) -> None:
    feed_id = add(cfg, server.serve(f"/{name}", fixture(f"feeds/{name}"), content_type="text/xml"))
    assert feeds.poll(cfg, feed_id).created == 1
    assert articles(cfg, feed_id)[0].title in ("RSS one-oh item", "Café news from 0.91")


def test_feed_with_script_title_and_description_is_sanitised(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    feed_id = add(cfg, server.serve("/evil", fixture("feeds/rss_script.xml")))
    assert feeds.poll(cfg, feed_id).created == 1
    (article,) = articles(cfg, feed_id)
    assert article.title == "Breaking news"
    assert [t.name for t in article.topics] == ["Tech"]
    stored = " ".join([article.title, article.summary, article.content_html]).lower()
    for bad in ("<script", "alert", "onclick", "onerror", "javascript:", "<iframe", "<style"):
        assert bad not in stored, bad
    assert "<object" not in stored and "data:" not in stored
    assert feed_row(cfg, feed_id).title == "Evil feed"


def test_missing_dates_mean_fetch_time_and_future_dates_are_clamped(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    feed_id = add(cfg, server.serve("/undated", fixture("feeds/rss_nodates.xml")))
    before = utcnow()
    feeds.poll(cfg, feed_id)
    after = utcnow()
    stored = articles(cfg, feed_id)
    assert len(stored) == 3
    for article in stored:
        assert before <= article.published_at <= after
        assert article.published_at.tzinfo is not None
    first_seen = {a.guid: a.published_at for a in stored}
    report = feeds.poll(cfg, feed_id)  # a later poll must not make them look new again
    assert report.unchanged == 3
    assert {a.guid: a.published_at for a in articles(cfg, feed_id)} == first_seen


def test_duplicate_guids_and_links_make_one_article_each(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    feed_id = add(cfg, server.serve("/dupes", fixture("feeds/rss_duplicates.xml")))
    report = feeds.poll(cfg, feed_id)
    assert (report.created, report.updated) == (2, 2)
    stored = articles(cfg, feed_id)
    assert sorted(a.guid for a in stored) == ["https://dupes.example.com/other", "story-1"]
    assert {a.title for a in stored} == {"Second version", "No guid, same link again"}
    server.routes["/dupes"].etag = None
    again = feeds.poll(cfg, feed_id)
    assert again.created == 0 and len(articles(cfg, feed_id)) == 2


def test_same_article_from_two_feeds_appears_once_after_dedupe(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    one = add(cfg, server.serve("/a.xml", fixture("feeds/rss_unicode.xml")))
    two = add(cfg, server.serve("/b.xml", fixture("feeds/rss_unicode.xml")))
    feeds.poll(cfg, one)
    feeds.poll(cfg, two)
    stored = articles(cfg)
    assert len(stored) == 4  # each source keeps its own row…
    newest_first = sorted(stored, key=lambda a: (a.published_at, -a.id), reverse=True)
    assert len(dedupe_articles(newest_first)) == 2  # …and the digest sees each story once


# -- conditional GET and failures ---------------------------------------------------------


def test_unchanged_feed_answers_304_to_the_conditional_get(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    url = server.serve(
        "/cond",
        fixture("feeds/atom.xml"),
        etag='"abc"',
        last_modified="Sat, 01 Jun 2024 10:00:00 GMT",
    )
    feed_id = add(cfg, url)
    feeds.poll(cfg, feed_id)
    report = feeds.poll(cfg, feed_id)
    assert report.status == "not_modified"
    second = server.requests_to("/cond")[1].headers
    assert second["if-none-match"] == '"abc"'
    assert second["if-modified-since"] == "Sat, 01 Jun 2024 10:00:00 GMT"
    assert second["user-agent"].startswith("mailer/")
    row = feed_row(cfg, feed_id)
    assert row.etag == '"abc"' and row.error_count == 0 and row.last_error is None
    assert len(articles(cfg, feed_id)) == 2


def test_server_error_keeps_the_last_good_state_and_backs_off(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    feed_id = add(cfg, server.serve("/flaky", fixture("feeds/atom.xml"), etag='"good"'))
    feeds.poll(cfg, feed_id)
    good = feed_row(cfg, feed_id)
    server.serve("/flaky", b"oops", status=500, content_type="text/plain")
    for attempt in (1, 2):
        report = feeds.poll(cfg, feed_id)
        assert report.status == "error" and "500" in (report.error or "")
        row = feed_row(cfg, feed_id)
        assert row.error_count == attempt
        assert row.next_poll_at == row.last_polled_at + timedelta(  # type: ignore[operator]
            seconds=feeds.backoff(row.interval, attempt)
        )
    assert (row.etag, row.title, row.last_success_at) == (
        good.etag,
        good.title,
        good.last_success_at,
    )
    assert len(articles(cfg, feed_id)) == 2
    server.serve("/flaky", fixture("feeds/atom.xml"))
    assert feeds.poll(cfg, feed_id).status == "ok"
    healed = feed_row(cfg, feed_id)
    assert healed.error_count == 0 and healed.last_error is None


@pytest.mark.parametrize(
    ("status", "retry_after", "seconds"),
    [
        pytest.param(429, "7200", 7200, id="429 in seconds"),
        pytest.param(503, "HTTP-date in three hours", 3 * 3600, id="503 as a date"),
        pytest.param(429, "soon", None, id="unreadable: the backoff"),
        pytest.param(500, "7200", None, id="500: not a request to wait"),
    ],
)
def test_a_feed_that_asks_us_to_wait_is_not_polled_before_its_retry_after(
    cfg: Settings, newsletter: str, server: FeedServer, status, retry_after, seconds
) -> None:
    from email.utils import format_datetime

    if retry_after.startswith("HTTP-date"):
        retry_after = format_datetime(utcnow() + timedelta(hours=3), usegmt=True)
    url = server.serve(
        "/busy",
        b"slow down",
        status=status,
        content_type="text/plain",
        headers={"Retry-After": retry_after},
    )
    feed_id = add(cfg, url)

    report = feeds.poll(cfg, feed_id)

    assert report.status == "error" and str(status) in (report.error or "")
    row = feed_row(cfg, feed_id)
    wait = (row.next_poll_at - row.last_polled_at).total_seconds()  # type: ignore[operator]
    if seconds is None:
        assert wait == feeds.backoff(row.interval, 1)
    else:
        assert abs(wait - seconds) <= 2 and wait > feeds.backoff(row.interval, 1)
    assert feeds.poll_due(cfg) == []  # not due yet: the site is not asked again
    assert len(server.requests_to("/busy")) == 1


def test_slow_feed_times_out_without_stopping_the_others(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    slow = add(cfg, server.serve("/slow", fixture("feeds/atom.xml"), stall=30))
    fine = add(cfg, server.serve("/fine", fixture("feeds/rss_unicode.xml")))
    reports = {r.feed_id: r for r in feeds.poll_due(cfg)}
    assert reports[slow].status == "error" and "timed out" in (reports[slow].error or "")
    assert reports[fine].status == "ok" and reports[fine].created == 2
    assert feed_row(cfg, slow).error_count == 1 and articles(cfg, slow) == []


@pytest.mark.parametrize("send_length", [True, False], ids=["declared", "streamed"])
def test_huge_feed_is_refused_at_the_size_cap(
    cfg: Settings, newsletter: str, server: FeedServer, send_length: bool
) -> None:
    item = b"<item><title>x</title><link>https://huge.example/x</link></item>"
    body = b'<?xml version="1.0"?><rss version="2.0"><channel><title>Huge</title>'
    body += item * (2 * cfg.feed_max_bytes // len(item)) + b"</channel></rss>"
    feed_id = add(cfg, server.serve("/huge", body, send_length=send_length))
    report = feeds.poll(cfg, feed_id)
    assert report.status == "error" and "larger than" in (report.error or "")
    assert articles(cfg, feed_id) == []
    assert feed_row(cfg, feed_id).title is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (fixture("feeds/malformed.xml"), "application/rss+xml"),
        (b"<html><body><h1>Not a feed</h1></body></html>", "text/html"),
        (b"\x00\xff\xfe garbage", "application/octet-stream"),
    ],
    ids=["truncated-xml", "html-page", "binary"],
)
def test_malformed_feed_is_an_error_that_keeps_the_last_good_state(
    cfg: Settings, newsletter: str, server: FeedServer, body: bytes, content_type: str
) -> None:
    feed_id = add(cfg, server.serve("/feed", fixture("feeds/atom.xml"), etag='"ok"'))
    feeds.poll(cfg, feed_id)
    server.serve("/feed", body, content_type=content_type)
    report = feeds.poll(cfg, feed_id)
    assert report.status == "error" and "feed" in (report.error or "")
    row = feed_row(cfg, feed_id)
    assert row.error_count == 1 and row.etag == '"ok"' and row.title == "Example Blog"
    assert len(articles(cfg, feed_id)) == 2


def test_a_feed_is_polled_again_only_when_its_interval_has_passed(
    cfg: Settings, newsletter: str, server: FeedServer
) -> None:
    feed_id = add(cfg, server.serve("/due", fixture("feeds/atom.xml")))
    with session_scope(cfg.database) as session:
        assert feeds.claim_due_feeds(session) == [feed_id]
        assert feeds.claim_due_feeds(session) == []  # claimed: the next tick leaves it
    feeds.poll(cfg, feed_id)
    with session_scope(cfg.database) as session:
        assert feeds.claim_due_feeds(session) == []
        later = utcnow() + timedelta(seconds=feed_row(cfg, feed_id).interval + 1)
        assert feeds.claim_due_feeds(session, now=later) == [feed_id]


def test_adding_a_bad_or_duplicate_feed_is_refused(cfg: Settings, newsletter: str) -> None:
    add(cfg, "https://example.org/feed.xml")
    for url, message in [
        ("https://example.org/feed.xml", "already has"),
        ("ftp://example.org/feed", "http"),
        ("not a url", "http"),
    ]:
        with pytest.raises(feeds.FeedError, match=message):
            add(cfg, url)
    with session_scope(cfg.database) as session:
        assert len(session.scalars(select(Feed)).all()) == 1
