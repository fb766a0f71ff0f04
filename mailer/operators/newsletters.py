"""Newsletters and their topics, as the operator creates, edits and archives them.

Like `subscriptions`, functions here flush but never commit; the caller owns
the unit of work.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.models import (
    EDITION_OPEN,
    Digest,
    Frequency,
    Newsletter,
    Status,
    Subscription,
    Topic,
    utcnow,
)
from mailer.operators.errors import Conflict, Invalid, NotFound, field_errors
from mailer.readers import newsletters


def newsletter(session: Session, slug: str) -> Newsletter:
    try:
        return newsletters.get_newsletter(session, slug)
    except newsletters.UnknownNewsletter as exc:
        raise NotFound(str(exc)) from exc


def list_newsletters(session: Session) -> Sequence[Newsletter]:
    return session.scalars(select(Newsletter).order_by(Newsletter.slug)).all()


def open_newsletters(session: Session) -> Sequence[Newsletter]:
    """The newsletters that take subscriptions (not archived), by name: the home page's list."""
    return session.scalars(
        select(Newsletter).where(Newsletter.archived_at.is_(None)).order_by(Newsletter.name)
    ).all()


class NewsletterOut(BaseModel):
    id: int
    slug: str
    name: str
    sender: str
    site_url: str | None
    default_frequency: Frequency
    paused: bool
    archived_at: datetime | None
    active_readers: int


def _active_readers(session: Session, ids: list[int]) -> dict[int, int]:
    return dict(
        session.execute(
            select(Subscription.newsletter_id, func.count())
            .where(Subscription.newsletter_id.in_(ids), Subscription.status == Status.ACTIVE)
            .group_by(Subscription.newsletter_id)
        ).all()
    )


def _newsletter_out(nl: Newsletter, active: int) -> NewsletterOut:
    return NewsletterOut(
        id=nl.id,
        slug=nl.slug,
        name=nl.name,
        sender=nl.sender,
        site_url=nl.site_url,
        default_frequency=nl.default_frequency,
        paused=nl.paused,
        archived_at=nl.archived_at,
        active_readers=active,
    )


def newsletter_out(session: Session, nl: Newsletter) -> NewsletterOut:
    return _newsletter_out(nl, _active_readers(session, [nl.id]).get(nl.id, 0))


def newsletters_out(session: Session) -> list[NewsletterOut]:
    """Every newsletter with its count of active readers, in slug order."""
    nls = list_newsletters(session)
    active = _active_readers(session, [nl.id for nl in nls])
    return [_newsletter_out(nl, active.get(nl.id, 0)) for nl in nls]


def parse_frequency(value: str, field_name: str = "frequency") -> Frequency:
    with field_errors():
        return newsletters.frequency(value, field_name)


def _sender(value: str) -> str:
    with field_errors():
        return newsletters.parse_sender(value)


def _name(value: str) -> str:
    with field_errors():
        return newsletters.newsletter_name(value)


def create_newsletter(
    session: Session,
    slug: str,
    name: str,
    sender: str,
    *,
    default_frequency: Frequency = Frequency.WEEKLY,
    site_url: str | None = None,
) -> Newsletter:
    """`readers.newsletters.create_newsletter`, with each refusal tied to its field."""
    with field_errors():
        return newsletters.create_newsletter(
            session, slug, name, sender, default_frequency=default_frequency, site_url=site_url
        )


def update_newsletter(
    session: Session,
    slug: str,
    *,
    name: str | None = None,
    sender: str | None = None,
    site_url: str | None = None,
    default_frequency: Frequency | None = None,
    paused: bool | None = None,
) -> Newsletter:
    """Change only what was given; the slug is the newsletter's identity and stays."""
    nl = newsletter(session, slug)
    new_name = _name(name) if name is not None else None
    new_sender = _sender(sender) if sender is not None else None
    if new_name is not None:
        nl.name = new_name
    if new_sender is not None:
        nl.sender = new_sender
    if site_url is not None:
        nl.site_url = site_url or None
    if default_frequency is not None:
        nl.default_frequency = default_frequency
    if paused is not None:
        nl.paused = paused
    session.flush()
    return nl


def archive_newsletter(session: Session, slug: str, now: datetime | None = None) -> Newsletter:
    """No more subscriptions or editions; every row about it is kept. Safe to repeat.

    Refused while an edition is still being made or sent, so "archived" never
    hides mail that is going out: wait for it, or cancel it first.
    """
    nl = newsletter(session, slug)
    if nl.archived_at is not None:
        return nl
    busy = session.scalar(
        select(Digest.id)
        .where(Digest.newsletter_id == nl.id, Digest.status.in_(EDITION_OPEN))
        .order_by(Digest.id)
        .limit(1)
    )
    if busy is not None:
        raise Conflict(
            f"Edition {busy} of {slug!r} is still being sent; wait for it to finish or cancel "
            f"it (`mailer digest cancel {busy}`), then archive."
        )
    nl.archived_at = now or utcnow()
    session.flush()
    return nl


def unarchive_newsletter(session: Session, slug: str) -> Newsletter:
    """Take subscriptions and make editions again, from the next scheduled time."""
    nl = newsletter(session, slug)
    nl.archived_at = None
    session.flush()
    return nl


# -- topics ---------------------------------------------------------------------------


class TopicOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    slug: str
    name: str


def list_topics(session: Session, slug: str) -> list[Topic]:
    return list(newsletter(session, slug).topics)


def create_topic(session: Session, slug: str, name: str) -> Topic:
    nl = newsletter(session, slug)
    clean = " ".join(name.split())
    if not clean or len(clean) > 200:
        raise Invalid("name", "A topic name is 1-200 characters on one line.")
    key = newsletters.slugify(clean)
    for topic in nl.topics:
        if topic.slug == key or topic.name.casefold() == clean.casefold():
            raise Conflict(
                f"Newsletter {slug!r} already has a topic {topic.slug!r} ({topic.name})."
            )
    return newsletters.ensure_topic(session, nl, clean)


def rename_topic(session: Session, slug: str, topic_slug: str, new_name: str) -> Topic:
    """Rename by the articles module's rule: the slug stays, so links and forms still work."""
    from mailer.content.articles import rename_topic as rename
    from mailer.content.incoming import ArticleError

    nl = newsletter(session, slug)
    if not any(t.slug == topic_slug for t in nl.topics):
        raise NotFound(f"Newsletter {slug!r} has no topic {topic_slug!r}.")
    try:
        return rename(session, nl, topic_slug, new_name)
    except ArticleError as exc:
        if "already" in str(exc):
            raise Conflict(str(exc)) from exc
        raise Invalid("name", str(exc)) from exc
