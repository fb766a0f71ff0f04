"""Articles as the operator sees them: list, show (stored and raw), exclude, include."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailer.content import cleaner
from mailer.content.articles import arrival_time
from mailer.models import (
    MAX_ID,
    Article,
    Newsletter,
    utcnow,
)
from mailer.operators.errors import Invalid, NotFound
from mailer.operators.newsletters import newsletter


class ArticleOut(BaseModel):
    """One line of `mailer article list` / `GET /api/newsletters/{slug}/articles`.

    `due_at` is when it became due to readers (null: history, never mailed);
    `excluded_at` is set while an operator keeps it out of editions.
    """

    id: int
    newsletter: str
    source: str
    url: str
    title: str
    topics: list[str]
    published_at: datetime
    arrived_at: datetime
    due_at: datetime | None
    excluded_at: datetime | None

    @property
    def in_editions(self) -> Literal["excluded", "history", "carried"]:
        """What editions make of it, in one word: kept out by an operator, history
        (older than the backfill window when it came: never mailed), or carried to
        each reader who lacks it. Not "due", which a newcomer read as "not sent yet"
        beside an article every reader already had."""
        if self.excluded_at is not None:
            return "excluded"
        return "history" if self.due_at is None else "carried"


def _article_out(article: Article, slug: str) -> ArticleOut:
    return ArticleOut(
        id=article.id,
        newsletter=slug,
        source=article.source,
        url=article.url,
        title=article.title,
        topics=[t.name for t in article.topics],
        published_at=article.published_at,
        arrived_at=article.arrived_at,
        due_at=article.due_at,
        excluded_at=article.excluded_at,
    )


class ArticleDetail(ArticleOut):
    """One stored article as readers get it and, when asked for, as its source sent it.

    `raw_kept` is false for articles stored before what sources send was kept
    (migration 0006); they were never cleaned again. `removed` lists what the
    cleaner, as it is today, takes out of what was sent: what the stored text lacks.
    """

    guid: str
    summary: str
    author: str | None
    image_url: str | None
    fetched_at: datetime
    updated_at: datetime
    content_html: str
    raw_kept: bool
    raw_summary: str | None = None
    raw_content: str | None = None
    removed: list[str] | None = None


def list_articles(session: Session, slug: str, limit: int = 20) -> list[ArticleOut]:
    """The newsletter's newest articles (by published time), with what editions make of them."""
    if not 1 <= limit <= 1000:
        raise Invalid("limit", f"limit is 1-1000, got {limit}")
    nl = newsletter(session, slug)
    rows = session.scalars(
        select(Article)
        .where(Article.newsletter_id == nl.id)
        .options(selectinload(Article.topics))
        .order_by(Article.published_at.desc(), Article.id.desc())
        .limit(limit)
    ).all()
    return [_article_out(a, nl.slug) for a in rows]


def find_article(session: Session, article_id: int) -> Article:
    found = session.get(Article, article_id) if 0 < article_id <= MAX_ID else None
    if found is None:
        raise NotFound(f"There is no article {article_id}.")
    return found


def exclude_article(session: Session, article_id: int, now: datetime | None = None) -> ArticleOut:
    """Keep an article out of every edition cut from now on, until it is put back.

    Readers who already got it, or have it queued, keep it: an edition prepared
    before stays as it was.
    """
    article = find_article(session, article_id)
    if article.excluded_at is None:
        article.excluded_at = now or utcnow()
        session.flush()
    return _article_out(article, session.get_one(Newsletter, article.newsletter_id).slug)


def include_article(session: Session, article_id: int, now: datetime | None = None) -> ArticleOut:
    """Put an excluded article back: due again from now, so the next edition of each
    frequency carries it to every reader it matches who has not had it. An
    article that was never excluded is left as it is."""
    article = find_article(session, article_id)
    if article.excluded_at is not None:
        article.excluded_at = None
        article.due_at = arrival_time(session, article.newsletter_id)
        session.flush()
    return _article_out(article, session.get_one(Newsletter, article.newsletter_id).slug)


def show_article(session: Session, article_id: int, *, raw: bool = False) -> ArticleDetail:
    article = find_article(session, article_id)
    newsletter = session.get(Newsletter, article.newsletter_id)
    assert newsletter is not None  # the FK cascades: an article never outlives it
    kept = article.raw_summary is not None or article.raw_content is not None
    detail = ArticleDetail(
        **_article_out(article, newsletter.slug).model_dump(),
        guid=article.guid,
        summary=article.summary,
        author=article.author,
        image_url=article.image_url,
        fetched_at=article.fetched_at,
        updated_at=article.updated_at,
        content_html=article.content_html,
        raw_kept=kept,
    )
    if raw and kept:
        sent = [article.raw_summary, article.raw_content]
        if sent[0] == sent[1]:  # a feed item with only a description is both
            sent = sent[:1]
        detail.raw_summary, detail.raw_content = article.raw_summary, article.raw_content
        detail.removed = [
            line for field in sent for line in cleaner.clean(field, title=article.title).removed
        ]
    return detail
