"""The feeds an operator attaches to a newsletter: add, edit, pause, remove."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.content import feeds
from mailer.models import (
    MAX_ID,
    Feed,
    Newsletter,
)
from mailer.operators.errors import Conflict, Invalid, NotFound
from mailer.operators.newsletters import newsletter


class FeedOut(BaseModel):
    id: int
    newsletter: str
    url: str
    title: str | None
    topics: list[str]
    interval: int
    backfill_days: int | None = None
    paused: bool
    last_polled_at: datetime | None
    last_success_at: datetime | None
    next_poll_at: datetime | None
    error_count: int
    last_error: str | None


def feed_out(feed: Feed, slug: str) -> FeedOut:
    return FeedOut(
        id=feed.id,
        newsletter=slug,
        url=feed.url,
        title=feed.title,
        topics=list(feed.topics or []),
        interval=feed.interval,
        backfill_days=feed.backfill_days,
        paused=feed.paused,
        last_polled_at=feed.last_polled_at,
        last_success_at=feed.last_success_at,
        next_poll_at=feed.next_poll_at,
        error_count=feed.error_count,
        last_error=feed.last_error,
    )


def find_feed(session: Session, feed_id: int) -> Feed:
    found = session.get(Feed, feed_id) if 0 < feed_id <= MAX_ID else None
    if found is None:
        raise NotFound(f"There is no feed {feed_id}.")
    return found


def _feed_out(session: Session, feed: Feed) -> FeedOut:
    return feed_out(feed, session.get_one(Newsletter, feed.newsletter_id).slug)


def list_feeds(session: Session, slug: str | None = None) -> list[FeedOut]:
    """Feeds with their last poll, next poll and last error; one newsletter's or all."""
    query = select(Feed, Newsletter.slug).join(Newsletter, Newsletter.id == Feed.newsletter_id)
    if slug is not None:
        query = query.where(Feed.newsletter_id == newsletter(session, slug).id)
    rows = session.execute(query.order_by(Newsletter.slug, Feed.id)).all()
    return [feed_out(f, nl_slug) for f, nl_slug in rows]


@contextmanager
def _feed_refusals() -> Iterator[None]:
    try:
        yield
    except feeds.FeedExists as exc:
        raise Conflict(str(exc)) from exc
    except feeds.FeedError as exc:
        raise Invalid(exc.field or "body", str(exc)) from exc


def add_feed(
    session: Session,
    settings: Settings,
    slug: str,
    url: str,
    *,
    topics: Sequence[str] = (),
    interval: int | None = None,
    backfill_days: int | None = None,
) -> FeedOut:
    """A new feed, polled from the next tick on; its topics exist at once."""
    nl = newsletter(session, slug)
    with _feed_refusals():
        feed = feeds.add_feed(
            session,
            nl,
            url,
            topics=list(topics),
            interval=interval,
            settings=settings,
            backfill_days=backfill_days,
        )
    return feed_out(feed, nl.slug)


def edit_feed(
    session: Session,
    feed_id: int,
    *,
    interval: int | None = None,
    topics: Sequence[str] | None = None,
) -> FeedOut:
    """A new interval, or a new list of topics replacing the old (for articles from now on)."""
    feed = find_feed(session, feed_id)
    with _feed_refusals():
        feeds.edit_feed(
            session, feed, interval=interval, topics=None if topics is None else list(topics)
        )
    return _feed_out(session, feed)


def set_feed_paused(session: Session, feed_id: int, paused: bool) -> FeedOut:
    feed = find_feed(session, feed_id)
    return _feed_out(session, feeds.set_paused(session, feed, paused))


def remove_feed(session: Session, feed_id: int) -> FeedOut:
    """The feed goes; the articles it brought stay, and so does what was sent of them."""
    feed = find_feed(session, feed_id)
    out = _feed_out(session, feed)
    session.delete(feed)
    session.flush()
    return out
