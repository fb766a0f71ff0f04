"""The beat side end to end: the tick's enqueueing and the poll task on a real Celery worker."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailer.config import Settings
from mailer.content import feeds
from mailer.db import session_scope
from mailer.models import Article, Feed, Newsletter
from mailer.readers.newsletters import create_newsletter
from tests.conftest import wait_for
from tests.fixtures.feedserver import FeedServer, fixture

# The test servers are on 127.0.0.1: these fetches are allowed to go there.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private_fetch")]


def test_due_feeds_are_polled_by_the_worker(
    settings: Settings, server: FeedServer, celery_worker: object
) -> None:
    from mailer.tasks import enqueue_feed_polls

    with session_scope(settings.database) as session:
        nl = create_newsletter(session, "news", "News", "News <news@example.com>")
        ok = feeds.add_feed(session, nl, server.serve("/ok", fixture("feeds/atom.xml"))).id
        broken = feeds.add_feed(session, nl, server.serve("/broken", b"", status=500)).id

    enqueue_feed_polls()  # what tick() does once a minute

    def polled() -> bool:
        with session_scope(settings.database) as session:
            rows = {f.id: f for f in session.scalars(select(Feed))}
            return all(f.last_polled_at is not None for f in rows.values())

    wait_for(polled, timeout=30)
    with session_scope(settings.database) as session:
        titles = session.scalars(
            select(Article.title).where(Article.source == f"feed:{ok}").order_by(Article.title)
        ).all()
        assert titles == ["Atom & entries", "Only updated"]
        failed = session.get(Feed, broken)
        assert failed is not None and failed.error_count == 1 and "500" in (failed.last_error or "")
        assert session.scalar(select(Newsletter.slug)) == "news"
    assert [s.headers["user-agent"][:7] for s in server.requests_to("/ok")] == ["mailer/"]
