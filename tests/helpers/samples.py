"""Every kind of mail we send, built by the real code: confirm and welcome from
notices.build_notice, a digest of the default article cap from the digest
context, renderer and per-reader personalisation. Shared by the SpamAssassin
scoring and the browser rendering tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid

from mailer.editions import render, selection
from mailer.mail.links import Links
from mailer.mail.messages import Slots
from mailer.mail.rendering import EmailRenderer
from mailer.models import Frequency, Notification, Subscription
from mailer.readers import newsletters, notices
from mailer.readers import subscriptions as subs
from mailer.sending import outgoing

READER = "reader@example.com"

TITLES = [
    "City council approves new cycling lanes along the river",
    "Library extends weekend opening hours from next month",
    "Researchers map the oldest trees in the national park",
    "Local bakery wins regional award for sourdough",
    "School garden project doubles its harvest this year",
    "Night trains return to the northern line in spring",
    "Museum opens a gallery of restored maritime paintings",
    "Volunteers clean two kilometres of the old canal",
    "New footbridge links the market square and the station",
    "Community orchestra announces its autumn programme",
    "Harbour festival draws record crowds despite the rain",
    "University publishes open data on regional air quality",
]
SUMMARY = (
    "The plan was discussed at length during the evening meeting, where residents "
    "asked about timing, costs and how the work would affect daily routines. "
    "Officials said the first phase should be finished before the summer holidays, "
    "and promised a public update once the contractors have been chosen."
)


@dataclass(frozen=True)
class Sample:
    kind: str
    data: bytes


def notice(session, settings, renderer: EmailRenderer, sub: Subscription, kind: str) -> bytes:
    note = Notification(subscription_id=sub.id, kind=kind)
    session.add(note)
    session.flush()
    _, data, _ = notices.build_notice(session, settings, renderer, note)
    return data


def digest_items(count: int, now: datetime) -> list[selection.Item]:
    return [
        selection.Item(
            id=n + 1,
            url=f"https://news.example.org/articles/{n + 1}",
            title=TITLES[n % len(TITLES)],
            summary=SUMMARY,
            image_url=f"https://news.example.org/images/{n + 1}.jpg",
            author="Alex Morgan",
            published_at=now - timedelta(hours=n + 1),
            topic_ids=frozenset(),
            topics=("Local", "Culture"),
        )
        for n in range(count)
    ]


def digest(session, settings, renderer: EmailRenderer, sub: Subscription) -> tuple[str, bytes]:
    """The rendered HTML of a full digest (the default article cap), and its wire bytes."""
    now = datetime(2025, 11, 24, 8, 0, tzinfo=UTC)
    nl = sub.newsletter
    cap = settings.digest_max_articles
    items = digest_items(cap + 3, now)  # three past the cap, listed by title and link
    slots = Slots.fresh()
    context = render.context_for(
        settings,
        nl,
        items[:cap],
        items[cap:],
        Links.from_settings(settings).digest(1),
        window_end=now,
        frequency=Frequency.WEEKLY,
        slots=slots,
    )
    rendered = renderer.render(render.KIND, context)
    template = outgoing.message_template(
        settings, nl, rendered.subject, rendered.html, rendered.text, slots
    )
    links = Links.from_settings(settings)
    message_id = make_msgid(idstring="d1.1", domain=template.domain)  # as delivery does
    data = b"".join(outgoing.personalise(template, links, sub, READER, message_id))
    return rendered.html, data


def all_kinds(session, settings) -> list[Sample]:
    renderer = EmailRenderer(settings.email_templates)
    newsletters.create_newsletter(
        session,
        "weekly",
        "Weekly News",
        "Weekly News <news@example.org>",
        site_url="https://news.example.org",
    )
    subs.subscribe(session, email=READER, newsletter="weekly", topics=(), confirmed=True)
    sub = session.query(Subscription).one()
    samples = [
        Sample("confirm", notice(session, settings, renderer, sub, "confirm")),
        Sample("welcome", notice(session, settings, renderer, sub, "welcome")),
        Sample("digest", digest(session, settings, renderer, sub)[1]),
    ]
    session.rollback()
    return samples
