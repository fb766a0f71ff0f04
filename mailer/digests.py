"""Editions: when they are due, which articles each reader gets, shared variants, closing.

An edition covers a window of published time that starts where the previous
edition of that newsletter and frequency ended, so consecutive editions never
overlap and never leave a gap. Readers are then grouped by the exact list of
articles they get: each group is one `DigestVariant`, rendered and inlined
once, so the per-reader work at send time is string substitution only.

A delivery reserves its variant's articles for its reader from the moment it
is written (a reservation, not a receipt), so an edition prepared while the
previous one is still going out cannot pick the same article for the same
reader; a delivery that finally fails, is skipped at send time or is
cancelled before it went gives them back (`Delivery.released`). Nothing is
written per reader per article: who holds an article is found from the few
variants that carry it (`VariantArticle`) and those variants' deliveries.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.content.articles import dedupe_articles, dedupe_key
from mailer.content.cleaner import cut_summary
from mailer.db import is_postgres
from mailer.mail.links import Links
from mailer.mail.messages import Slot, Slots
from mailer.mail.rendering import EmailRenderer, RenderedEmail
from mailer.models import (
    Article,
    ArticleTopic,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestVariant,
    EditionStatus,
    Frequency,
    Newsletter,
    Schedule,
    Status,
    Subscriber,
    Subscription,
    SubscriptionTopic,
    Topic,
    VariantArticle,
    utcnow,
)
from mailer.readers import suppressions
from mailer.readers.addresses import address_hash

log = logging.getLogger(__name__)

PERIOD = {Frequency.DAILY: timedelta(days=1), Frequency.WEEKLY: timedelta(days=7)}
DEFAULT_CRON = {Frequency.DAILY: "0 8 * * *", Frequency.WEEKLY: "0 8 * * MON"}
# How late a missed fire time may still be honoured (beat was down, a deploy...).
# Older fire times are dropped rather than sending yesterday's edition today.
CATCH_UP = timedelta(hours=1)
# Deliveries in these states may still change; an edition with none left is done.
OPEN = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.SENDING,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.UNKNOWN,
)
KIND = "digest"


class DigestError(ValueError):
    """A request about editions we refuse; the message says why."""


# -- windows and schedules ------------------------------------------------------------


def window(frequency: Frequency, end: datetime, previous_end: datetime | None) -> datetime:
    """The start of an edition's window: the previous edition's end, or one period back."""
    if previous_end is not None and previous_end < end:
        return previous_end
    return end - PERIOD[frequency]


class ScheduleError(DigestError):
    """A schedule we could not evaluate; `field` says which half is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_cron(cron: str) -> str:
    """The expression as it is stored (single spaces), or ScheduleError. Five fields
    only: croniter would also take a sixth (seconds) that a minute's tick can't keep."""
    cron = " ".join(cron.split())
    if len(cron.split(" ")) != 5 or not croniter.is_valid(cron):
        raise ScheduleError(
            "cron",
            f"{cron!r} is not a valid cron expression: write a five-field one (minute "
            "hour day-of-month month day-of-week), e.g. '0 8 * * MON'.",
        )
    return cron


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            "timezone",
            f"Unknown time zone {name!r}; use an IANA name like Europe/Kyiv or UTC.",
        ) from exc


def check_schedule(cron: str, timezone: str) -> tuple[str, str]:
    """Refuse a schedule we could not evaluate, before it is stored; else the
    (cron, zone) to store."""
    return check_cron(cron), check_timezone(timezone).key


def last_fire(cron: str, timezone: str, now: datetime) -> datetime:
    """The most recent fire time at or before `now`, computed in the schedule's own zone.

    Evaluating in local time is what makes "08:00" stay 08:00 for the reader
    across daylight-saving changes; the result is returned in UTC. A cron
    names wall-clock times, and each one fires once: on the autumn day the
    clock shows 02:00-03:00 twice, a time in that hour fires at its first
    showing only (croniter would fire it at both, so a daily `30 2 * * *`
    went out twice). On the spring day a time the clock skips fires once,
    at the end of the gap (02:30 → 03:00), which is croniter's own answer.
    """
    zone = check_timezone(timezone)
    check_cron(cron)
    it = croniter(cron, now.astimezone(zone) + timedelta(seconds=1))
    for _ in range(4):
        prev: datetime = it.get_prev(datetime)
        if not _second_showing(prev, zone):
            break
    return prev.astimezone(now.tzinfo)


def _second_showing(moment: datetime, zone: ZoneInfo) -> bool:
    """Whether the wall-clock time of `moment` was already shown once, an hour earlier."""
    wall = moment.astimezone(zone)
    return wall.replace(fold=0).astimezone(UTC) < moment.astimezone(UTC)


def due_fire(cron: str, timezone: str, now: datetime, last_end: datetime | None) -> datetime | None:
    """The fire time an edition is owed for, or None when nothing is due."""
    fire = last_fire(cron, timezone, now)
    if now - fire > CATCH_UP:
        return None
    if last_end is not None and last_end >= fire:
        return None
    return fire


@dataclass(frozen=True)
class Due:
    newsletter_id: int
    frequency: Frequency
    fire: datetime
    schedule_id: int | None


def _insert(session: Session, model: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(model)


def due_editions(session: Session, now: datetime) -> list[Due]:
    """Every (newsletter, frequency) whose schedule has fired and has no edition yet."""
    out: list[Due] = []
    newsletters = session.scalars(
        select(Newsletter).where(Newsletter.paused.is_(False), Newsletter.archived_at.is_(None))
    ).all()
    for nl in newsletters:
        rows = session.scalars(select(Schedule).where(Schedule.newsletter_id == nl.id)).all()
        plans: list[tuple[Frequency, str, str, int | None]] = [
            (s.frequency, s.cron, s.timezone, s.id) for s in rows
        ]
        if not rows:
            active = session.scalars(
                select(Subscription.frequency)
                .where(Subscription.newsletter_id == nl.id, Subscription.status == Status.ACTIVE)
                .distinct()
            ).all()
            plans = [(f, DEFAULT_CRON[f], "UTC", None) for f in Frequency if f in set(active)]
        for frequency, cron, tz, schedule_id in plans:
            last_end = session.scalar(
                select(func.max(Digest.window_end)).where(
                    Digest.newsletter_id == nl.id, Digest.frequency == frequency
                )
            )
            try:
                fire = due_fire(cron, tz, now, last_end)
            except DigestError as exc:
                log.error("newsletter %s: schedule %s skipped: %s", nl.slug, frequency, exc)
                continue
            if fire is not None:
                out.append(Due(nl.id, frequency, fire, schedule_id))
    return out


def create_edition(
    session: Session, newsletter_id: int, frequency: Frequency, end: datetime
) -> Digest:
    """The edition ending at `end`, made if missing; a second call returns the same one."""
    if end.tzinfo is None:
        raise DigestError("an edition's end must be a timezone-aware time")
    previous = session.scalar(
        select(func.max(Digest.window_end)).where(
            Digest.newsletter_id == newsletter_id,
            Digest.frequency == frequency,
            Digest.window_end < end,
        )
    )
    stmt = (
        _insert(session, Digest)
        .values(
            newsletter_id=newsletter_id,
            frequency=frequency,
            window_start=window(frequency, end, previous),
            window_end=end,
            status=EditionStatus.CREATED,
            created_at=utcnow(),
            counts={},
        )
        .on_conflict_do_nothing(index_elements=["newsletter_id", "frequency", "window_end"])
    )
    session.execute(stmt)
    return session.scalars(
        select(Digest).where(
            Digest.newsletter_id == newsletter_id,
            Digest.frequency == frequency,
            Digest.window_end == end,
        )
    ).one()


def create_now(
    session: Session, newsletter: Newsletter, frequency: Frequency, now: datetime | None = None
) -> Digest:
    """An on-demand edition ending now, to the minute, so a double trigger makes one."""
    if newsletter.archived_at is not None:
        raise DigestError(
            f"{newsletter.slug} is archived and sends nothing; "
            f"`mailer newsletter unarchive {newsletter.slug}` first."
        )
    now = now or utcnow()
    return create_edition(session, newsletter.id, frequency, now.replace(second=0, microsecond=0))


def create_due(session: Session, now: datetime | None = None) -> list[int]:
    """Create every edition that is due; returns their ids (new or already there)."""
    now = now or utcnow()
    ids = []
    for due in due_editions(session, now):
        digest = create_edition(session, due.newsletter_id, due.frequency, due.fire)
        if due.schedule_id is not None:
            schedule = session.get_one(Schedule, due.schedule_id)
            schedule.last_run_at = now
        ids.append(digest.id)
    session.flush()
    return ids


# -- who gets what ----------------------------------------------------------------------


@dataclass
class Item:
    """An article as the templates see it."""

    id: int
    url: str
    title: str
    summary: str
    image_url: str | None
    author: str | None
    published_at: datetime
    topic_ids: frozenset[int]
    topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reader:
    subscription_id: int
    email: str
    topic_ids: frozenset[int]


@dataclass(frozen=True)
class Selection:
    article_ids: tuple[int, ...]
    more: int

    @cached_property
    def key(self) -> str:
        """Asked once per reader in prepare; readers share a few selections."""
        raw = ",".join(map(str, self.article_ids)) + f"|{self.more}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _url_key(url: str) -> str:
    """The same story under another URL spelling (ingest's rule, so both agree)."""
    return dedupe_key(url)


def select_for(
    items: Sequence[Item],
    reader_topics: frozenset[int],
    sent_ids: set[int],
    sent_urls: set[str],
    cap: int,
) -> Selection:
    """The reader's articles: matching topics (none chosen = all), not sent before, capped.

    `items` are newest first; what passes the cap is counted in `more`.
    """
    chosen = [
        item.id
        for item in items
        if item.id not in sent_ids
        and _url_key(item.url) not in sent_urls
        and (not reader_topics or item.topic_ids & reader_topics)
    ]
    cap = max(1, cap)
    return Selection(tuple(chosen[:cap]), max(0, len(chosen) - cap))


def group_variants(selections: dict[int, Selection]) -> dict[str, list[int]]:
    """Subscription ids by variant key; readers with nothing new are left out."""
    groups: dict[str, list[int]] = defaultdict(list)
    for sub_id, selection in selections.items():
        if selection.article_ids:
            groups[selection.key].append(sub_id)
    return dict(groups)


def window_items(
    session: Session, newsletter_id: int, start: datetime, end: datetime
) -> list[Item]:
    """Articles published in (start, end], newest first, one per URL."""
    articles = session.scalars(
        select(Article)
        .where(
            Article.newsletter_id == newsletter_id,
            Article.published_at > start,
            Article.published_at <= end,
        )
        .order_by(Article.published_at.desc(), Article.id.desc())
    ).all()
    topics: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if articles:
        for article_id, topic_id, name in session.execute(
            select(ArticleTopic.article_id, Topic.id, Topic.name)
            .join(Topic, Topic.id == ArticleTopic.topic_id)
            .where(ArticleTopic.article_id.in_([a.id for a in articles]))
            .order_by(Topic.name)
        ):
            topics[article_id].append((topic_id, name))
    return dedupe_articles(
        Item(
            id=a.id,
            url=a.url,
            title=a.title,
            summary=a.summary or "",
            image_url=a.image_url,
            author=a.author,
            published_at=a.published_at,
            topic_ids=frozenset(t for t, _ in topics[a.id]),
            topics=tuple(n for _, n in topics[a.id]),
        )
        for a in articles
    )


def holding() -> Any:
    """Deliveries that hold their variant's articles for their reader."""
    return and_(Delivery.variant_id.is_not(None), Delivery.released.is_(False))


@dataclass(frozen=True)
class Reservations:
    """The variants of other editions that carry any of a window's articles, by id
    or by URL, with those articles: all a reader's history that can matter here."""

    digest_ids: tuple[int, ...] = ()
    variants: dict[int, tuple[frozenset[int], frozenset[str]]] = field(default_factory=dict)


def reservations_for(
    session: Session, newsletter_id: int, items: Sequence[Item], exclude_digest: int | None
) -> Reservations:
    if not items:
        return Reservations()
    query = (
        select(VariantArticle.variant_id, DigestVariant.digest_id, Article.id, Article.url)
        .join(DigestVariant, DigestVariant.id == VariantArticle.variant_id)
        .join(Article, Article.id == VariantArticle.article_id)
        .where(
            Article.newsletter_id == newsletter_id,
            or_(
                Article.id.in_([i.id for i in items]),
                Article.url.in_(sorted({i.url for i in items})),
            ),
        )
    )
    if exclude_digest is not None:
        query = query.where(DigestVariant.digest_id != exclude_digest)
    digest_ids: set[int] = set()
    found: dict[int, tuple[set[int], set[str]]] = defaultdict(lambda: (set(), set()))
    for variant_id, digest_id, article_id, url in session.execute(query):
        digest_ids.add(digest_id)
        found[variant_id][0].add(article_id)
        found[variant_id][1].add(_url_key(url))
    return Reservations(
        tuple(sorted(digest_ids)),
        {v: (frozenset(ids), frozenset(urls)) for v, (ids, urls) in found.items()},
    )


def already_sent(
    session: Session, reservations: Reservations, between: tuple[int, int]
) -> dict[int, tuple[set[int], set[str]]]:
    """Per subscription in `between`, which of the window's articles (by id or by URL)
    it already got or has coming. No earlier variant carries them: no query at all."""
    out: dict[int, tuple[set[int], set[str]]] = {}
    if not reservations.variants:
        return out
    rows = session.execute(
        select(Delivery.subscription_id, Delivery.variant_id).where(
            Delivery.digest_id.in_(reservations.digest_ids),
            Delivery.subscription_id.between(*between),
            Delivery.variant_id.in_(list(reservations.variants)),
            holding(),
        )
    )
    for sub_id, variant_id in rows:
        assert variant_id is not None  # asked for by id
        ids, urls = reservations.variants[variant_id]
        got_ids, got_urls = out.setdefault(sub_id, (set(), set()))
        got_ids |= ids
        got_urls |= urls
    return out


def reserved_articles(session: Session, digest_id: int | None = None) -> set[tuple[int, int]]:
    """(subscription, article) pairs held by deliveries, of one edition or all."""
    query = (
        select(Delivery.subscription_id, VariantArticle.article_id)
        .join(VariantArticle, VariantArticle.variant_id == Delivery.variant_id)
        .where(holding())
    )
    if digest_id is not None:
        query = query.where(Delivery.digest_id == digest_id)
    return {(sub_id, article_id) for sub_id, article_id in session.execute(query)}


# -- rendering --------------------------------------------------------------------------


def safe_url(url: str | None) -> str:
    """Only web links go into mail; anything else (javascript:, data:) is dropped."""
    if url and url.strip().lower().startswith(("http://", "https://")):
        return url.strip()
    return ""


def context_for(
    settings: Settings,
    newsletter: Newsletter,
    items: Sequence[Item],
    more: int,
    view_url: str,
    *,
    window_end: datetime,
    frequency: Frequency,
    slots: Slots,
) -> dict[str, Any]:
    """Everything the digest templates see; reader-specific values are this
    rendering's markers (`slots`), which no article text can spell."""
    articles: list[dict[str, Any]] = [
        {
            "title": " ".join(item.title.split()) or "(untitled)",
            "url": safe_url(item.url),
            "summary": cut_summary(item.summary, settings.summary_length),
            "image_url": safe_url(item.image_url),
            "author": item.author or "",
            "published": item.published_at.strftime("%d %b %Y"),
            "topics": list(item.topics),
        }
        for item in items
    ]
    site = safe_url(newsletter.site_url) or settings.base_url
    titles = ", ".join(a["title"] for a in articles[:3])
    return {
        "newsletter_name": newsletter.name,
        "frequency": frequency.value,
        "edition_date": window_end.strftime("%d %B %Y"),
        "articles": articles,
        "more_count": more,
        "more_url": site,
        "site_url": site,
        "view_url": view_url,
        "preheader": cut_summary(titles, 140),
        "email_placeholder": slots.marker(Slot.EMAIL),
        "unsubscribe_url": slots.marker(Slot.UNSUBSCRIBE_URL),
        "preferences_url": slots.marker(Slot.PREFERENCES_URL),
    }


def render_selection(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    newsletter: Newsletter,
    by_id: dict[int, Item],
    selection: Selection,
    view_url: str,
    *,
    window_end: datetime,
    frequency: Frequency,
    slots: Slots,
) -> RenderedEmail:
    items = [by_id[i] for i in selection.article_ids]
    context = context_for(
        settings,
        newsletter,
        items,
        selection.more,
        view_url,
        window_end=window_end,
        frequency=frequency,
        slots=slots,
    )
    return renderer.render(KIND, context)


# -- prepare ------------------------------------------------------------------------------


@dataclass
class Prepared:
    digest_id: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    queued: int = 0
    skipped: int = 0
    variants: int = 0
    already: bool = False


def open_ranges(session: Session, digest_id: int, size: int) -> list[tuple[int, int]]:
    """Id ranges of about `size` queued rows each: one send task per range.

    Grouped in SQL, so a 100,000-row edition sends back 500 pairs, not its ids.
    """
    size = max(1, size)
    numbered = (
        select(
            Delivery.id.label("id"),
            ((func.row_number().over(order_by=Delivery.id) - 1) // size).label("chunk"),
        )
        .where(Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.QUEUED)
        .subquery()
    )
    rows = session.execute(
        select(func.min(numbered.c.id), func.max(numbered.c.id))
        .group_by(numbered.c.chunk)
        .order_by(numbered.c.chunk)
    ).all()
    return [(int(lo), int(hi)) for lo, hi in rows]


def chunk_ranges(ids: Sequence[int], size: int) -> list[tuple[int, int]]:
    size = max(1, size)
    return [(ids[i], ids[min(i + size, len(ids)) - 1]) for i in range(0, len(ids), size)]


def _lock_digest(session: Session, digest_id: int) -> Digest:
    query = select(Digest).where(Digest.id == digest_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    digest = session.scalars(query).one_or_none()
    if digest is None:
        raise DigestError(f"There is no edition {digest_id}.")
    return digest


def prepare(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    digest_id: int,
    now: datetime | None = None,
) -> Prepared:
    """Choose, group, render once per variant and write every delivery row.

    Safe to run twice (a redelivered task): the edition row is locked and a
    prepared edition only reports its open ranges again.
    """
    now = now or utcnow()
    digest = _lock_digest(session, digest_id)
    result = Prepared(digest_id)
    if digest.status is not EditionStatus.CREATED:
        result.already = True
        result.ranges = open_ranges(session, digest_id, settings.send_batch_size)
        return result
    nl = session.get_one(Newsletter, digest.newsletter_id)
    items = window_items(session, nl.id, digest.window_start, digest.window_end)
    by_id = {i.id: i for i in items}
    links = Links.from_settings(settings)
    variant_ids: dict[str, int] = {}

    def variant_for(selection: Selection) -> int:
        key = selection.key
        if key not in variant_ids:
            variant_ids[key] = _make_variant(
                session, settings, renderer, nl, digest, by_id, selection, key, links
            )
        return variant_ids[key]

    held = reservations_for(session, nl.id, items, exclude_digest=digest.id)
    for readers in reader_chunks(session, nl.id, digest.frequency, PREPARE_CHUNK):
        queued, skipped = _prepare_chunk(
            session, settings, digest.id, items, held, readers, variant_for, now
        )
        result.queued += queued
        result.skipped += skipped
    result.variants = len(variant_ids)
    digest.status = EditionStatus.SENDING
    digest.prepared_at = now
    session.flush()
    if is_postgres(session) and result.queued + result.skipped >= ANALYZE_AFTER:
        # The planner's row counts predate the rows just written: it took
        # `digest_id = N` for a few rows and scanned the whole edition's index
        # entries in every 200-row claim (O(N) each, ~3 ms at 100,000). Fresh
        # statistics before the first claim keep claims on the primary key.
        session.execute(text("ANALYZE delivery"))
    result.ranges = open_ranges(session, digest.id, settings.send_batch_size)
    digest.counts = counts(session, digest.id)
    session.flush()
    return result


# Readers handled per step of prepare: its memory is one chunk, not the list.
PREPARE_CHUNK = 5000
# An edition this big refreshes the delivery table's statistics once prepared.
ANALYZE_AFTER = 5000


def reader_chunks(
    session: Session, newsletter_id: int, frequency: Frequency, size: int
) -> Iterable[list[Reader]]:
    """Active readers in subscription-id order, `size` at a time (keyset pages)."""
    after = 0
    while True:
        rows = session.execute(
            select(Subscription.id, Subscriber.email)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(
                Subscription.newsletter_id == newsletter_id,
                Subscription.frequency == frequency,
                Subscription.status == Status.ACTIVE,
                Subscription.id > after,
            )
            .order_by(Subscription.id)
            .limit(size)
        ).all()
        if not rows:
            return
        lo, hi = rows[0][0], rows[-1][0]
        topics: dict[int, set[int]] = defaultdict(set)
        for sub_id, topic_id in session.execute(
            select(SubscriptionTopic.subscription_id, SubscriptionTopic.topic_id).where(
                SubscriptionTopic.subscription_id.between(lo, hi)
            )
        ):
            topics[sub_id].add(topic_id)
        # Equal topic sets share one frozenset: a 100,000-reader edition has a few.
        shared: dict[frozenset[int], frozenset[int]] = {}
        yield [
            Reader(sid, email, shared.setdefault(frozenset(topics[sid]), frozenset(topics[sid])))
            for sid, email in rows
        ]
        after = hi


def _make_variant(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    nl: Newsletter,
    digest: Digest,
    by_id: dict[int, Item],
    selection: Selection,
    key: str,
    links: Links,
) -> int:
    """Render one article list once, store it with its markers' nonce, and return its id."""
    slots = Slots.fresh()
    rendered = render_selection(
        session,
        settings,
        renderer,
        nl,
        by_id,
        selection,
        f"{links.digest(digest.id)}?v={key}",
        window_end=digest.window_end,
        frequency=digest.frequency,
        slots=slots,
    )
    session.execute(
        _insert(session, DigestVariant)
        .values(
            digest_id=digest.id,
            key=key,
            article_ids=list(selection.article_ids),
            subject=rendered.subject[:998],
            html=rendered.html,
            text=rendered.text,
            slots=slots.nonce,
        )
        .on_conflict_do_nothing(index_elements=["digest_id", "key"])
    )
    variant_id = int(
        session.scalars(
            select(DigestVariant.id).where(
                DigestVariant.digest_id == digest.id, DigestVariant.key == key
            )
        ).one()
    )
    session.execute(
        _insert(session, VariantArticle).on_conflict_do_nothing(),
        [{"variant_id": variant_id, "article_id": a} for a in selection.article_ids],
    )
    return variant_id


def _prepare_chunk(
    session: Session,
    settings: Settings,
    digest_id: int,
    items: Sequence[Item],
    held: Reservations,
    readers: Sequence[Reader],
    variant_for: Any,
    now: datetime,
) -> tuple[int, int]:
    """Choose for one chunk of readers and write its delivery rows; (queued, skipped)."""
    lo, hi = readers[0].subscription_id, readers[-1].subscription_id
    sent = already_sent(session, held, between=(lo, hi))
    hashes = {r.subscription_id: address_hash(r.email) for r in readers}
    blocked = suppressions.suppressed(session, hashes.values())
    # Readers with no history get the same list as everyone with their topics.
    fresh: dict[frozenset[int], Selection] = {}
    sub_ids: list[int] = []
    variants: list[int | None] = []
    states: list[str] = []
    replies: list[str | None] = []
    cap = settings.digest_max_articles
    for reader in readers:
        sid = reader.subscription_id
        sub_ids.append(sid)
        if hashes[sid] in blocked:
            variants.append(None)
            states.append(DeliveryStatus.SKIPPED.value)
            replies.append("suppressed")
            continue
        got = sent.get(sid)
        if got is None:
            chosen = fresh.get(reader.topic_ids)
            if chosen is None:
                chosen = fresh[reader.topic_ids] = select_for(
                    items, reader.topic_ids, set(), set(), cap
                )
        else:
            chosen = select_for(items, reader.topic_ids, got[0], got[1], cap)
        if not chosen.article_ids:
            variants.append(None)
            states.append(DeliveryStatus.SKIPPED.value)
            replies.append("nothing new")
            continue
        variants.append(variant_for(chosen))
        states.append(DeliveryStatus.QUEUED.value)
        replies.append(None)
    _insert_deliveries(session, digest_id, sub_ids, variants, states, replies, now)
    queued = sum(1 for state in states if state == DeliveryStatus.QUEUED.value)
    return queued, len(states) - queued


def _insert_deliveries(
    session: Session,
    digest_id: int,
    sub_ids: list[int],
    variants: list[int | None],
    states: list[str],
    replies: list[str | None],
    now: datetime,
) -> None:
    """The chunk's rows in one statement on PostgreSQL (arrays through unnest).

    The ORM's bulk insert sent them one parameter set at a time: 3 s of a
    10,000-reader prepare. `ON CONFLICT DO NOTHING` keeps a second prepare
    from making a second row per (edition, subscription).
    """
    if not sub_ids:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text(
                "INSERT INTO delivery (digest_id, subscription_id, variant_id, status, "
                "smtp_reply, attempts, updated_at) "
                "SELECT :digest_id, t.sid, t.vid, t.status, t.reply, 0, :now "
                "FROM unnest(CAST(:sids AS integer[]), CAST(:vids AS integer[]), "
                "CAST(:states AS varchar[]), CAST(:replies AS text[])) "
                "AS t(sid, vid, status, reply) "
                "ON CONFLICT (digest_id, subscription_id) DO NOTHING"
            ),
            {
                "digest_id": digest_id,
                "now": now,
                "sids": sub_ids,
                "vids": variants,
                "states": states,
                "replies": replies,
            },
        )
        return
    rows = [
        {
            "digest_id": digest_id,
            "subscription_id": sid,
            "variant_id": vid,
            "status": DeliveryStatus(state),
            "smtp_reply": reply,
            "attempts": 0,
            "updated_at": now,
        }
        for sid, vid, state, reply in zip(sub_ids, variants, states, replies, strict=True)
    ]
    for i in range(0, len(rows), 1000):
        session.execute(
            _insert(session, Delivery).on_conflict_do_nothing(
                index_elements=["digest_id", "subscription_id"]
            ),
            rows[i : i + 1000],
        )


# -- status and close -------------------------------------------------------------------


def counts(session: Session, digest_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    ).all()
    return {str(status.value if hasattr(status, "value") else status): n for status, n in rows}


def close_if_done(session: Session, digest_id: int, now: datetime | None = None) -> bool:
    """Record the edition's counts; mark it done once no delivery can change any more."""
    digest = session.get(Digest, digest_id)
    if digest is None or digest.status not in (EditionStatus.SENDING, EditionStatus.DONE):
        return False
    tally = counts(session, digest_id)
    digest.counts = tally
    if digest.status is EditionStatus.SENDING and not any(tally.get(s.value, 0) for s in OPEN):
        digest.status = EditionStatus.DONE
        digest.finished_at = now or utcnow()
    session.flush()
    return digest.status is EditionStatus.DONE


def has_open(session: Session, digest_id: int) -> bool:
    """Whether any delivery of the edition may still change: one indexed probe."""
    return (
        session.scalar(
            select(Delivery.id)
            .where(Delivery.digest_id == digest_id, Delivery.status.in_(OPEN))
            .limit(1)
        )
        is not None
    )


def close_finished(session: Session, now: datetime | None = None) -> list[int]:
    ids = session.scalars(select(Digest.id).where(Digest.status == EditionStatus.SENDING)).all()
    return [i for i in ids if close_if_done(session, i, now)]


def stale_unprepared(
    session: Session, older_than: timedelta, now: datetime | None = None
) -> list[int]:
    """Editions created but never prepared (their task was lost): prepare them again."""
    cutoff = (now or utcnow()) - older_than
    return list(
        session.scalars(
            select(Digest.id).where(
                Digest.status == EditionStatus.CREATED, Digest.created_at < cutoff
            )
        )
    )


# -- preview --------------------------------------------------------------------------------


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
    """The next edition as a reader would get it, written nowhere.

    With an address, that reader's topics and sent history count; without,
    an all-topics reader who has seen nothing.
    """
    now = (now or utcnow()).replace(second=0, microsecond=0)
    sub: Subscription | None = None
    topics: frozenset[int] = frozenset()
    if email:
        sub = session.scalar(
            select(Subscription)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(
                Subscription.newsletter_id == newsletter.id,
                Subscriber.email_key == email.strip().casefold(),
            )
        )
        if sub is None:
            raise DigestError(f"{email} is not subscribed to {newsletter.slug}.")
        topics = frozenset(t.id for t in sub.topics)
    freq = frequency or (sub.frequency if sub else newsletter.default_frequency)
    previous = session.scalar(
        select(func.max(Digest.window_end)).where(
            and_(
                Digest.newsletter_id == newsletter.id,
                Digest.frequency == freq,
                Digest.window_end < now,
            )
        )
    )
    start = window(freq, now, previous)
    items = window_items(session, newsletter.id, start, now)
    got_ids: set[int] = set()
    got_urls: set[str] = set()
    if sub is not None:
        held = reservations_for(session, newsletter.id, items, exclude_digest=None)
        got_ids, got_urls = already_sent(session, held, (sub.id, sub.id)).get(
            sub.id, (set(), set())
        )
    selection = select_for(items, topics, got_ids, got_urls, settings.digest_max_articles)
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
        {i.id: i for i in items},
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
