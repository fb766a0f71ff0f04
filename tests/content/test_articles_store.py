"""Upserts, topics and batches against a real (SQLite) database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer import db
from mailer.content.articles import (
    BatchRejected,
    Outcome,
    ingest_batch,
    map_topics,
    rename_topic,
    upsert_article,
)
from mailer.content.incoming import ArticleError, CleanArticle, RawArticle, normalise
from mailer.models import Article, Newsletter, Topic
from mailer.readers.newsletters import create_newsletter

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Session]:
    session = db.session_factory(sqlite_url)()
    yield session
    session.close()


@pytest.fixture
def news(store: Session) -> Newsletter:
    return create_newsletter(store, "news", "News", "News <news@example.com>")


def _clean(**fields: Any) -> CleanArticle:
    raw = RawArticle(**{"url": "https://x.example/a", "title": "Title", **fields})
    return normalise(raw, base_url=None, now=NOW)


def _count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Article)) or 0


def test_same_guid_twice_updates_and_never_duplicates(store: Session, news: Newsletter) -> None:
    first, outcome = upsert_article(store, news, "feed:1", _clean(guid="g", title="One"))
    assert outcome is Outcome.CREATED
    second, outcome = upsert_article(store, news, "feed:1", _clean(guid="g", title="Two"))
    assert outcome is Outcome.UPDATED and second.id == first.id and second.title == "Two"
    _, outcome = upsert_article(store, news, "feed:1", _clean(guid="g", title="Two"))
    assert outcome is Outcome.UNCHANGED
    assert _count(store) == 1


def test_same_guid_from_another_source_is_another_article(store: Session, news: Newsletter) -> None:
    upsert_article(store, news, "feed:1", _clean(guid="g"))
    upsert_article(store, news, "feed:2", _clean(guid="g"))
    assert _count(store) == 2


def test_undated_article_keeps_its_first_seen_date(store: Session, news: Newsletter) -> None:
    first = normalise(RawArticle(url="https://x.example/a", title="t"), base_url=None, now=NOW)
    article, _ = upsert_article(store, news, "feed:1", first)
    later = NOW + timedelta(hours=5)
    again = normalise(RawArticle(url="https://x.example/a", title="t"), base_url=None, now=later)
    article, outcome = upsert_article(store, news, "feed:1", again)
    assert outcome is Outcome.UNCHANGED and article.published_at == NOW


def test_categories_become_topics_created_on_first_sight(store: Session, news: Newsletter) -> None:
    article, _ = upsert_article(
        store, news, "feed:1", _clean(topics=["Tech", "Мир"]), extra_topics=["World"]
    )
    assert sorted(t.name for t in article.topics) == ["Tech", "World", "Мир"]
    again, _ = upsert_article(store, news, "feed:1", _clean(guid="other", topics=["tech"]))
    assert [t.name for t in again.topics] == ["Tech"]
    assert store.scalar(select(func.count()).select_from(Topic)) == 3


def test_renamed_topic_still_catches_its_old_and_new_names(
    store: Session, news: Newsletter
) -> None:
    (tech,) = map_topics(store, news, ["Tech"])
    rename_topic(store, news, "tech", "Technology")
    assert [t.id for t in map_topics(store, news, ["tech"])] == [tech.id]
    assert [t.id for t in map_topics(store, news, ["TECHNOLOGY"])] == [tech.id]
    assert tech.slug == "tech" and tech.name == "Technology"


def test_rename_to_another_topics_name_is_refused_and_changes_nothing(
    store: Session, news: Newsletter
) -> None:
    map_topics(store, news, ["Tech", "Science"])
    with pytest.raises(ArticleError, match="already"):
        rename_topic(store, news, "tech", "science")
    with pytest.raises(ArticleError, match="no topic"):
        rename_topic(store, news, "nope", "Anything")
    with pytest.raises(ArticleError, match="one line"):
        rename_topic(store, news, "tech", "   ")
    names = store.scalars(select(Topic.name).order_by(Topic.name)).all()
    assert names == ["Science", "Tech"]


def test_batch_with_one_bad_item_stores_nothing_and_names_every_fault(
    store: Session, news: Newsletter
) -> None:
    items = [
        ("news", RawArticle(url="https://x.example/ok", title="Fine")),
        ("news", RawArticle(url="javascript:alert(1)", title="Bad link")),
        ("nope", RawArticle(url="https://x.example/b", title="Unknown newsletter")),
        (None, RawArticle(url="https://x.example/c", title="No newsletter")),
    ]
    with pytest.raises(BatchRejected) as rejected:
        ingest_batch(store, items, summary_length=280)
    assert [(i, f) for i, f, _ in rejected.value.errors] == [
        (1, "url"),
        (2, "newsletter"),
        (3, "newsletter"),
    ]
    assert _count(store) == 0


def test_batch_sending_a_guid_twice_leaves_one_article(store: Session, news: Newsletter) -> None:
    items = [
        ("news", RawArticle(url="https://x.example/a", title="v1", guid="cms-1")),
        ("news", RawArticle(url="https://x.example/a", title="v2", guid="cms-1")),
    ]
    stored = ingest_batch(store, items, summary_length=280)
    assert [o for _, o in stored] == [Outcome.CREATED, Outcome.UPDATED]
    assert _count(store) == 1 and stored[0][0].title == "v2"
