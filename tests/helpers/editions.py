"""Helpers shared by the digest and send tests (no tests here).

Articles are written as rows directly: ingest is someone else's module and
the digest only depends on the table.
"""

from __future__ import annotations

import re
from datetime import timedelta
from email.message import EmailMessage

from sqlalchemy import insert, select

from mailer.models import (
    Article,
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Newsletter,
    Schedule,
    Status,
    Subscriber,
    Subscription,
    utcnow,
)
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from tests.conftest import wait_for

SENDER = "The News <news@news.example.org>"
SITE = "https://news.example.org"


def make_newsletter(session, slug: str = "news") -> Newsletter:
    nl = newsletters.create_newsletter(
        session, slug, "The News", SENDER, default_frequency=Frequency.DAILY, site_url=SITE
    )
    # A schedule that cannot fall due during a test run (29 February, midnight),
    # so a tick never makes an edition of its own behind the test's back.
    session.add(Schedule(newsletter_id=nl.id, frequency=Frequency.DAILY, cron="0 0 29 2 *"))
    session.flush()
    return nl


def add_reader(session, nl: Newsletter, email: str, topics=(), status=Status.ACTIVE):
    for topic in topics:
        newsletters.ensure_topic(session, nl, topic)
    out = subs.subscribe(
        session,
        email=email,
        newsletter=nl.slug,
        topics=list(topics),
        frequency="daily",
        confirmed=status is not Status.PENDING,
    )
    sub = session.get(Subscription, out.subscription_id)
    if status not in (Status.ACTIVE, Status.PENDING):
        subs.change_status(session, sub, status, source="test")
    session.flush()
    return sub


def add_readers_bulk(session, nl: Newsletter, n: int, domain: str = "bulk.example.org") -> None:
    """Many active readers at once, written with two INSERTs."""
    now = utcnow()
    emails = [f"reader{i:05d}@{domain}" for i in range(n)]
    ids = session.scalars(
        insert(Subscriber)
        .returning(Subscriber.id)
        .values([{"email": e, "email_key": e, "created_at": now} for e in emails])
    ).all()
    session.execute(
        insert(Subscription).values(
            [
                {
                    "subscriber_id": sid,
                    "newsletter_id": nl.id,
                    "status": Status.ACTIVE,
                    "frequency": Frequency.DAILY,
                    "generation": 1,
                    "created_at": now,
                    "status_changed_at": now,
                    "soft_bounces": 0,
                }
                for sid in ids
            ]
        )
    )
    session.flush()


def add_article(
    session,
    nl: Newsletter,
    title: str,
    *,
    hours_ago: float = 1,
    topics=(),
    url: str | None = None,
    source: str = "test",
    summary: str = "",
    arrived_hours_ago: float | None = None,
) -> Article:
    """An article that arrives now (or arrived `arrived_hours_ago`), published
    `hours_ago`: editions take what arrived after their reader's last cut."""
    url = url or f"{SITE}/{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}"
    published = utcnow() - timedelta(hours=hours_ago)
    arrived = utcnow() - timedelta(hours=arrived_hours_ago or 0)
    article = Article(
        arrived_at=arrived,
        due_at=arrived,
        newsletter_id=nl.id,
        source=source,
        guid=url + "#" + source,
        url=url,
        title=title,
        summary=summary or f"About {title}.",
        published_at=published,
    )
    article.topics = [newsletters.ensure_topic(session, nl, t) for t in topics]
    session.add(article)
    session.flush()
    return article


def prepared_edition(session, settings, emails):
    """One story for these readers, prepared: (edition id, its send ranges, subscription
    by address)."""
    from mailer.editions import prepare, schedule
    from mailer.mail.rendering import EmailRenderer
    from mailer.models import Frequency

    nl = make_newsletter(session)
    subs_by_email = {e: add_reader(session, nl, e) for e in emails}
    add_article(session, nl, "Story")
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    prepared = prepare.prepare(
        session, settings, EmailRenderer(settings.email_templates), edition.id
    )
    session.commit()
    return edition.id, prepared.ranges, subs_by_email


def send_edition_now(session, settings, nl: Newsletter) -> int:
    """Make, prepare and send the newsletter's edition ending now, as the tick and the
    worker would one after the other; its id."""
    from mailer.editions import prepare, schedule
    from mailer.mail.rendering import EmailRenderer
    from mailer.models import Frequency
    from mailer.sending import loop

    edition = schedule.create_now(session, nl, Frequency.DAILY)
    prepared = prepare.prepare(
        session, settings, EmailRenderer(settings.email_templates), edition.id
    )
    session.commit()
    for lo, hi in prepared.ranges:
        loop.send_range(session, settings, edition.id, lo, hi)
    return edition.id


def sendable_edition(session, settings, readers: int):
    """A prepared edition of `readers` readers (r000@example.org, ...): its id, the
    first and last delivery id of its whole range, and the addresses."""
    emails = [f"r{i:03d}@example.org" for i in range(readers)]
    digest_id, ranges, _ = prepared_edition(session, settings, emails)
    return digest_id, ranges[0][0], ranges[-1][1], emails


def deliveries_by_email(session, digest_id: int) -> dict[str, Delivery]:
    session.expire_all()
    rows = session.execute(
        select(Subscriber.email, Delivery)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.digest_id == digest_id)
    ).all()
    return {email: row for email, row in rows}


def statuses(session, digest_id: int) -> dict[str, DeliveryStatus]:
    return {e: row.status for e, row in deliveries_by_email(session, digest_id).items()}


def wait_done(session, digest_id: int, timeout: float = 30.0) -> Digest:
    def done():
        session.expire_all()
        d = session.get(Digest, digest_id)
        return d if d.status == "done" else None

    return wait_for(done, timeout=timeout)


def parts(message: EmailMessage) -> tuple[str, str]:
    """(text, html) of a multipart/alternative digest, checking text comes first."""
    assert message.get_content_type() == "multipart/alternative"
    first, second = list(message.iter_parts())
    assert first.get_content_type() == "text/plain"
    assert second.get_content_type() == "text/html"
    return first.get_content(), second.get_content()


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html)


def row_for(session, sub) -> Delivery:
    """The subscription's one delivery row, read afresh."""
    session.expire_all()
    return session.scalars(select(Delivery).where(Delivery.subscription_id == sub.id)).one()
