"""The next edition before it is cut (a draft, written nowhere) and a sent one in the browser.

Both fill the rendered markers with values that are not a reader's own
unless the operator named one (`reader_values`); the public view never names
anyone (`neutral_values`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.editions.errors import DigestError
from mailer.editions.plan import Plan
from mailer.editions.render import render_selection
from mailer.editions.selection import Reader
from mailer.mail.links import Links
from mailer.mail.messages import Slot, Slots
from mailer.mail.rendering import EmailRenderer, RenderedEmail
from mailer.models import (
    Digest,
    DigestVariant,
    Frequency,
    Newsletter,
    Subscriber,
    Subscription,
    utcnow,
)
from mailer.readers.addresses import address_key


@dataclass(frozen=True)
class Draft:
    """What the next edition would hold for one reader, rendered with the markers
    of `slots` where the reader's values go."""

    newsletter: Newsletter
    frequency: Frequency
    window_start: datetime
    window_end: datetime
    article_ids: tuple[int, ...]
    rendered: RenderedEmail
    subscription: Subscription | None
    slots: Slots


def draft(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    newsletter: Newsletter,
    *,
    email: str | None = None,
    frequency: Frequency | None = None,
    now: datetime | None = None,
) -> Draft:
    """The next edition as a reader would get it if it were cut now, written nowhere.

    With an address, that reader's topics, last cut and history count;
    without, an all-topics reader of the frequency who starts now. Nothing is
    polled: what has arrived is what an edition cut now would carry.
    """
    now = now or utcnow()
    sub: Subscription | None = None
    reader = Reader(0, "", frozenset(), now)
    if email:
        sub = session.scalar(
            select(Subscription)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(
                Subscription.newsletter_id == newsletter.id,
                Subscriber.email_key == address_key(email.strip()),
            )
        )
        if sub is None:
            raise DigestError(f"{email} is not subscribed to {newsletter.slug}.")
        topics = frozenset(t.id for t in sub.topics)
        reader = Reader(sub.id, sub.subscriber.email, topics, sub.confirmed_at)
    freq = frequency or (sub.frequency if sub else newsletter.default_frequency)
    plan = Plan(session, newsletter.id, freq, now, exclude_digest=None)
    choice = plan.choose([reader], settings.digest_max_articles)
    selection = choice.selections[reader.subscription_id]
    start = choice.since[reader.subscription_id]
    if not selection.article_ids:
        raise DigestError(
            f"Nothing new for {'that reader' if email else newsletter.slug} since "
            f"{start:%Y-%m-%d %H:%M} UTC: no mail would be sent."
        )
    links = Links.from_settings(settings)
    slots = Slots.fresh()
    rendered = render_selection(
        session,
        settings,
        renderer,
        newsletter,
        plan.by_id,
        selection,
        links.subscribe(newsletter.slug),
        window_end=now,
        frequency=freq,
        slots=slots,
    )
    return Draft(newsletter, freq, start, now, selection.article_ids, rendered, sub, slots)


def neutral_values(settings: Settings, newsletter: Newsletter) -> dict[str, str]:
    """Stand-ins for the reader's address and links where no reader is known."""
    subscribe = Links.from_settings(settings).subscribe(newsletter.slug)
    return {
        Slot.EMAIL: "you",
        Slot.UNSUBSCRIBE_URL: subscribe,
        Slot.PREFERENCES_URL: subscribe,
    }


def reader_values(
    settings: Settings, newsletter: Newsletter, sub: Subscription | None
) -> dict[str, str]:
    """The values of a preview's slots: that reader's own address and links, or neutral."""
    values = neutral_values(settings, newsletter)
    if sub is not None:
        links = Links.from_settings(settings)
        values[Slot.EMAIL] = sub.subscriber.email
        values[Slot.UNSUBSCRIBE_URL] = links.unsubscribe(sub)
        values[Slot.PREFERENCES_URL] = links.preferences(sub)
    return values


def draft_html(settings: Settings, draft: Draft) -> str:
    """A draft's HTML as its reader (or nobody in particular) would see it."""
    values = reader_values(settings, draft.newsletter, draft.subscription)
    return draft.slots.fill(draft.rendered.html, values, html=True)


def public_html(session: Session, settings: Settings, digest_id: int, key: str | None) -> str:
    """An edition's HTML for the browser: a variant with every reader detail neutral."""
    digest = session.get(Digest, digest_id)
    if digest is None:
        raise DigestError("There is no such edition.")
    query = select(DigestVariant).where(DigestVariant.digest_id == digest_id)
    if key:
        query = query.where(DigestVariant.key == key)
    variant = session.scalars(query.order_by(DigestVariant.id).limit(1)).first()
    if variant is None:
        raise DigestError("This edition has no content to show.")
    nl = session.get_one(Newsletter, digest.newsletter_id)
    return Slots.stored(variant.slots).fill(variant.html, neutral_values(settings, nl), html=True)
