"""An operator's hand on editions: an article taken out and put back, a feed's back
catalogue, and the due feeds an edition polls before it is cut."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy import select

from mailer import tasks
from mailer.content import feeds
from mailer.content.articles import upsert_article
from mailer.content.incoming import RawArticle, normalise
from mailer.editions import errors, prepare, preview, reservations, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import Article, Feed, Frequency, utcnow
from mailer.operators import articles as articles_ops
from mailer.operators import newsletters as newsletters_ops
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from tests.conftest import API_TOKEN as TOKEN
from tests.helpers.cli import run


@pytest.fixture
def newsletter(settings, session):
    nl = newsletters.create_newsletter(session, "news", "News", "News <news@example.org>")
    subs.subscribe(session, email="ann@example.org", newsletter="news", confirmed=True)
    session.commit()
    return nl


def store(session, nl, n: int) -> int:
    raw = RawArticle(url=f"https://news.example.org/{n}", title=f"Story {n}")
    article, _ = upsert_article(session, nl, "api:1", normalise(raw, base_url=None))
    session.commit()
    return article.id


def next_edition(session, settings) -> set[int]:
    """The articles the edition cut now would carry to the reader."""
    nl = newsletters_ops.newsletter(session, "news")
    try:
        draft = preview.draft(
            session, settings, EmailRenderer(settings.email_templates), nl, frequency=None
        )
    except errors.DigestError:
        return set()
    return set(draft.article_ids)


def test_an_excluded_article_stays_out_of_editions_until_it_is_put_back(
    api, settings, session, newsletter
):
    kept, out = store(session, newsletter, 1), store(session, newsletter, 2)
    answer = api.post(f"/api/articles/{out}/exclude", headers=TOKEN)
    assert answer.status_code == 200 and answer.json()["excluded_at"] is not None
    session.expire_all()
    assert next_edition(session, settings) == {kept}
    listed = run("article", "list", "news", width=80).output
    assert "excluded" in listed
    shown = run("article", "show", str(out)).output
    assert "kept out of editions since" in shown and f"article include {out}" in shown
    assert "arrived " in shown

    result = run("article", "include", str(out))
    assert result.exit_code == 0 and "goes in the next editions" in result.output
    assert "due to readers from" in run("article", "show", str(out)).output
    # The list's word for it says editions carry it, not "due" (read as "not sent yet").
    listed = run("article", "list", "news", width=80).output
    assert "excluded" not in listed and listed.count("carried") == 2
    session.expire_all()
    assert next_edition(session, settings) == {kept, out}


def test_an_article_put_back_after_an_edition_left_it_out_goes_in_the_next_one(
    settings, session, newsletter
):
    out = store(session, newsletter, 1)
    articles_ops.exclude_article(session, out)
    session.commit()
    edition = schedule.create_edition(
        session, newsletter.id, Frequency.WEEKLY, utcnow() - timedelta(minutes=1)
    )
    prepared = prepare.prepare(
        session, settings, EmailRenderer(settings.email_templates), edition.id
    )
    session.commit()
    assert prepared.queued == 0
    articles_ops.include_article(session, out)
    session.commit()
    assert next_edition(session, settings) == {out}


@pytest.mark.parametrize("article_id", ["0", "999", str(2**31)])
def test_excluding_or_including_an_unknown_article_is_refused_and_changes_nothing(
    api, settings, session, newsletter, article_id
):
    known = store(session, newsletter, 1)
    for verb in ("exclude", "include"):
        answer = api.post(f"/api/articles/{article_id}/{verb}", headers=TOKEN)
        assert answer.status_code in (404, 422), answer.text
        result = run("article", verb, article_id)
        assert result.exit_code != 0 and "no article" in result.output.lower()
    session.expire_all()
    assert session.get(Article, known).excluded_at is None


def test_a_bad_backfill_is_refused_by_the_cli_and_the_api_and_adds_no_feed(
    api, settings, session, newsletter
):
    result = run("feed", "add", "news", "https://example.org/feed.xml", "--backfill-days", "-1")
    assert result.exit_code != 0 and "backfill" in result.output
    answer = api.post(
        "/api/newsletters/news/feeds",
        json={"url": "https://example.org/feed.xml", "backfill_days": 4000},
        headers=TOKEN,
    )
    assert answer.status_code == 422 and "backfill" in answer.text
    assert session.scalars(select(Feed)).all() == []


def feed_of(items: list[tuple[str, timedelta]]) -> bytes:
    now = utcnow()
    entries = "".join(
        f"<item><title>{t}</title><link>https://shop.example.org/{i}</link>"
        f"<pubDate>{format_datetime(now - age)}</pubDate></item>"
        for i, (t, age) in enumerate(items)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel>{entries}</channel></rss>'.encode()


def test_backfill_days_decides_what_a_new_feeds_first_poll_makes_due(
    allow_private_fetch, api, server, settings, session, newsletter
):
    url = server.serve(
        "/f.xml", feed_of([("Ten days old", timedelta(days=10)), ("Fresh", timedelta(hours=1))])
    )
    answer = api.post(
        "/api/newsletters/news/feeds", json={"url": url, "backfill_days": 30}, headers=TOKEN
    )
    assert answer.status_code == 201 and answer.json()["backfill_days"] == 30
    feeds.poll(settings, answer.json()["id"])
    due = dict(session.execute(select(Article.title, Article.due_at)).all())
    assert set(due) == {"Ten days old", "Fresh"} and None not in due.values()


def test_an_edition_polls_its_due_feeds_before_the_cut_and_a_stalled_one_does_not_hold_it(
    allow_private_fetch, monkeypatch, server, settings, session, newsletter
):
    from tests.conftest import configure

    configure(monkeypatch, feed_timeout="1")
    good = server.serve("/good.xml", feed_of([("Just published", timedelta(minutes=2))]))
    stalled = server.serve(
        "/stalled.xml", feed_of([("Never came", timedelta(minutes=2))]), stall=30
    )
    for url in (good, stalled):
        feeds.add_feed(session, newsletter, url)
    edition = schedule.create_now(session, newsletter, Frequency.WEEKLY)
    session.commit()

    tasks.prepare_digest(edition.id)  # the worker's task, run here

    session.expire_all()
    carried = {a for _, a in reservations.reserved_articles(session, edition.id)}
    titles = set(session.scalars(select(Article.title).where(Article.id.in_(carried))))
    assert titles == {"Just published"}
