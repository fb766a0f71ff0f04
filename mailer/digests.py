"""Editions: when they are due, which articles each reader gets, shared variants, closing.

An edition is named by its window (the schedule's fire times) but carries
articles by *arrival*: it is cut when it is prepared (`Digest.cut_at`, timed
against arrivals under a lock, `articles.edition_cut`), and each reader gets
what became due after their own last cut up to this one, whatever its
published date (`Plan`). Consecutive cuts never overlap and never leave a
gap, for a reader who switches frequency too. Readers are then grouped by the
exact list of articles they get: each group is one `DigestVariant`, rendered
and inlined once, so the per-reader work at send time is string substitution
only.

A delivery reserves its variant's articles for its reader from the moment it
is written (a reservation, not a receipt), so an edition prepared while the
previous one is still going out cannot pick the same article for the same
reader; a delivery that finally fails, is skipped at send time or is
cancelled before it went gives them back (`Delivery.released`), to that
reader's next edition (`Delivery.returned` once taken). Nothing is
written per reader per article: who holds an article is found from the few
variants that carry it (`VariantArticle`) and those variants' deliveries.
"""

from __future__ import annotations

import bisect
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
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailer.canonical import dedupe_key
from mailer.config import Settings
from mailer.content import articles
from mailer.content.cleaner import cut_summary
from mailer.db import among, is_postgres
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
    # When it became due (`Article.due_at`): compared with each reader's last cut.
    due_at: datetime | None = None

    @cached_property
    def url_key(self) -> str:
        """The story under any spelling of its link, as stored in `Article.story`."""
        return dedupe_key(self.url)[:2000]


@dataclass(frozen=True)
class Reader:
    subscription_id: int
    email: str
    topic_ids: frozenset[int]
    # Their latest (re)activation: a fresh start begins at the cut before it.
    confirmed_at: datetime | None = None


@dataclass(frozen=True)
class Selection:
    """A reader's articles, newest first: the first `full` with summary and image,
    the rest listed by title and link. Every one of them counts as delivered."""

    article_ids: tuple[int, ...]
    full: int

    @property
    def compact(self) -> int:
        return len(self.article_ids) - self.full

    @cached_property
    def key(self) -> str:
        """Asked once per reader in prepare; readers share a few selections."""
        raw = ",".join(map(str, self.article_ids)) + f"|{self.full}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _newest_first(item: Item) -> tuple[datetime, int]:
    return item.published_at, item.id


def select_for(
    items: Sequence[Item],
    reader_topics: frozenset[int],
    sent_ids: set[int],
    sent_urls: set[str],
    cap: int,
    *,
    since: datetime | None = None,
    returned: Sequence[Item] = (),
) -> Selection:
    """The reader's articles: due after `since` and matching their topics (none
    chosen = all), plus what a given-up delivery handed back; none they have or
    have coming (by id or URL), each story once, newest published first.

    `items` are newest first. The first `cap` are shown in full, the rest compactly.
    """
    chosen = [
        item
        for item in items
        if (since is None or (item.due_at is not None and item.due_at > since))
        and (not reader_topics or item.topic_ids & reader_topics)
        and item.id not in sent_ids
    ]
    if returned:
        have = {item.id for item in chosen}
        chosen.extend(i for i in returned if i.id not in have and i.id not in sent_ids)
        chosen.sort(key=_newest_first, reverse=True)
    seen = set(sent_urls)
    ids: list[int] = []
    for item in chosen:
        if item.url_key in seen:
            continue
        seen.add(item.url_key)
        ids.append(item.id)
    return Selection(tuple(ids), min(max(1, cap), len(ids)))


def group_variants(selections: dict[int, Selection]) -> dict[str, list[int]]:
    """Subscription ids by variant key; readers with nothing new are left out."""
    groups: dict[str, list[int]] = defaultdict(list)
    for sub_id, selection in selections.items():
        if selection.article_ids:
            groups[selection.key].append(sub_id)
    return dict(groups)


def load_items(session: Session, newsletter_id: int, *where: Any) -> list[Item]:
    """The newsletter's articles that editions may carry (not excluded), newest
    published first, with their topics."""
    articles = session.scalars(
        select(Article)
        .where(Article.newsletter_id == newsletter_id, Article.excluded_at.is_(None), *where)
        .order_by(Article.published_at.desc(), Article.id.desc())
    ).all()
    topics: dict[int, list[tuple[int, str]]] = defaultdict(list)
    ids = [a.id for a in articles]
    for i in range(0, len(ids), 5000):
        for article_id, topic_id, name in session.execute(
            select(ArticleTopic.article_id, Topic.id, Topic.name)
            .join(Topic, Topic.id == ArticleTopic.topic_id)
            .where(ArticleTopic.article_id.in_(ids[i : i + 5000]))
            .order_by(Topic.name)
        ):
            topics[article_id].append((topic_id, name))
    return [
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
            due_at=a.due_at,
        )
        for a in articles
    ]


def due_items(
    session: Session, newsletter_id: int, after: datetime | None, upto: datetime
) -> list[Item]:
    """Articles that became due in (after, upto], newest published first."""
    where = [Article.due_at.is_not(None), Article.due_at <= upto]
    if after is not None:
        where.append(Article.due_at > after)
    return load_items(session, newsletter_id, *where)


def holding() -> Any:
    """Deliveries that hold their variant's articles for their reader."""
    return and_(Delivery.variant_id.is_not(None), Delivery.released.is_(False))


# Spelled as the partial index ix_delivery_unreturned is, so both databases use it.
UNRETURNED = text("delivery.released AND NOT delivery.returned")


@dataclass(frozen=True)
class Reservations:
    """The variants of other editions that carry any of a set of articles, by id
    or by URL, with those articles: all a reader's history that can matter here."""

    digest_ids: tuple[int, ...] = ()
    variants: dict[int, tuple[frozenset[int], frozenset[str]]] = field(default_factory=dict)

    def merged(self, other: Reservations) -> Reservations:
        variants = dict(self.variants)
        for vid, (ids, urls) in other.variants.items():
            had = variants.get(vid, (frozenset(), frozenset()))
            variants[vid] = (had[0] | ids, had[1] | urls)
        return Reservations(tuple(sorted({*self.digest_ids, *other.digest_ids})), variants)


def reservations_for(
    session: Session, newsletter_id: int, items: Sequence[Item], exclude_digest: int | None
) -> Reservations:
    if not items:
        return Reservations()
    query = (
        select(VariantArticle.variant_id, DigestVariant.digest_id, Article.id, Article.story)
        .join(DigestVariant, DigestVariant.id == VariantArticle.variant_id)
        .join(Article, Article.id == VariantArticle.article_id)
        .where(
            Article.newsletter_id == newsletter_id,
            or_(
                Article.id.in_([i.id for i in items]),
                Article.story.in_(sorted({i.url_key for i in items})),
            ),
        )
    )
    if exclude_digest is not None:
        query = query.where(DigestVariant.digest_id != exclude_digest)
    digest_ids: set[int] = set()
    found: dict[int, tuple[set[int], set[str]]] = defaultdict(lambda: (set(), set()))
    for variant_id, digest_id, article_id, story in session.execute(query):
        digest_ids.add(digest_id)
        found[variant_id][0].add(article_id)
        found[variant_id][1].add(story)
    return Reservations(
        tuple(sorted(digest_ids)),
        {v: (frozenset(ids), frozenset(urls)) for v, (ids, urls) in found.items()},
    )


def already_sent(
    session: Session, reservations: Reservations, between: tuple[int, int]
) -> dict[int, tuple[set[int], set[str]]]:
    """Per subscription in `between`, which of the articles (by id or by URL) it
    already got or has coming. No earlier variant carries them: no query at all."""
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


@dataclass
class Choice:
    """What one chunk of readers gets, and the given-up deliveries it took back."""

    selections: dict[int, Selection]
    since: dict[int, datetime]
    returned_deliveries: list[int]


class Plan:
    """What one cut of a (newsletter, frequency) owes its readers, set-based.

    A reader's articles are those that became due after their own last cut
    (the latest edition, of any frequency, that has a delivery row for them,
    or the cut before their latest opt-in, whichever is later) up to this cut
    and match their topics then; plus what their given-up deliveries hand
    back; minus anything they already have or have coming. Readers share
    their last cut: the articles are loaded once per distinct cut, the
    editions' history asked once per chunk of readers, never per reader.
    """

    def __init__(
        self,
        session: Session,
        newsletter_id: int,
        frequency: Frequency,
        cut: datetime,
        exclude_digest: int | None,
    ) -> None:
        self.session = session
        self.newsletter_id = newsletter_id
        self.frequency = frequency
        self.cut = cut
        self.exclude_digest = exclude_digest
        self.postgres = is_postgres(session)
        query = select(Digest.id, Digest.frequency, Digest.cut_at).where(
            Digest.newsletter_id == newsletter_id,
            Digest.cut_at.is_not(None),
            Digest.cut_at <= cut,
        )
        if exclude_digest is not None:
            query = query.where(Digest.id != exclude_digest)
        cuts: dict[Frequency, list[datetime]] = defaultdict(list)
        editions: list[tuple[int, datetime]] = []
        for digest_id, freq, at in session.execute(query.order_by(Digest.cut_at)):
            assert at is not None  # asked for
            cuts[Frequency(freq)].append(at)
            editions.append((digest_id, at))
        self.cuts = dict(cuts)
        # Where every reader who was active lately has a row: the latest edition of
        # each frequency and everything cut since the earlier of the two.
        latest = [c[-1] for c in self.cuts.values()]
        floor = min(latest) if latest else cut
        self.recent = {d: at for d, at in editions if at >= floor}
        self.older = len(self.recent) < len(editions)
        self.start = self.fresh_start(cut)
        self.items: list[Item] = []
        self.loaded_after: datetime | None = cut
        self.by_id: dict[int, Item] = {}
        self.held = Reservations()

    def fresh_start(self, at: datetime) -> datetime:
        """Where a reader starting at `at` begins: the cut of their frequency before
        it (what today's window would give them), or one period back."""
        cuts = self.cuts.get(self.frequency, [])
        i = bisect.bisect_right(cuts, at)
        return cuts[i - 1] if i else self.cut - PERIOD[self.frequency]

    def _last_cuts(self, readers: Sequence[Reader]) -> dict[int, datetime]:
        lo, hi = readers[0].subscription_id, readers[-1].subscription_id
        last: dict[int, datetime] = {}
        if self.recent:
            for sid, digest_id in self.session.execute(
                select(Delivery.subscription_id, Delivery.digest_id).where(
                    Delivery.digest_id.in_(list(self.recent)),
                    Delivery.subscription_id.between(lo, hi),
                )
            ):
                at = self.recent[digest_id]
                if sid not in last or at > last[sid]:
                    last[sid] = at
        missing = [r.subscription_id for r in readers if r.subscription_id not in last]
        if missing and self.older:
            # Readers in none of the recent editions: their own latest, if any.
            query = (
                select(Delivery.subscription_id, func.max(Digest.cut_at))
                .join(Digest, Digest.id == Delivery.digest_id)
                .where(
                    among(Delivery.subscription_id, missing, self.postgres),
                    Digest.newsletter_id == self.newsletter_id,
                    Digest.cut_at.is_not(None),
                    Digest.cut_at <= self.cut,
                )
                .group_by(Delivery.subscription_id)
            )
            if self.exclude_digest is not None:
                query = query.where(Digest.id != self.exclude_digest)
            for sid, latest in self.session.execute(query):
                if latest is not None:
                    last[sid] = latest
        return last

    def since(self, readers: Sequence[Reader]) -> dict[int, datetime]:
        """Each reader's own last cut: what became due after it is theirs now."""
        last = self._last_cuts(readers)
        out: dict[int, datetime] = {}
        for r in readers:
            best = last.get(r.subscription_id)
            if r.confirmed_at is not None:
                fresh = self.fresh_start(r.confirmed_at)
                if best is None or fresh > best:
                    best = fresh
            out[r.subscription_id] = self.start if best is None else best
        return out

    def _returned(self, readers: Sequence[Reader]) -> tuple[dict[int, set[int]], list[int]]:
        """Articles of given-up deliveries (failed, cancelled, skipped at send) not
        yet taken back, per reader; a reader who opted in again since starts afresh."""
        lo, hi = readers[0].subscription_id, readers[-1].subscription_id
        confirmed = {r.subscription_id: r.confirmed_at for r in readers}
        out: dict[int, set[int]] = defaultdict(set)
        deliveries: set[int] = set()
        for delivery_id, sid, at, article_id in self.session.execute(
            select(Delivery.id, Delivery.subscription_id, Digest.cut_at, VariantArticle.article_id)
            .join(Digest, Digest.id == Delivery.digest_id)
            .join(VariantArticle, VariantArticle.variant_id == Delivery.variant_id)
            .where(
                Delivery.subscription_id.between(lo, hi),
                UNRETURNED,
                Digest.newsletter_id == self.newsletter_id,
            )
        ):
            if sid not in confirmed:
                continue  # not this edition's reader: their own edition takes it back
            deliveries.add(delivery_id)
            start = confirmed[sid]
            if start is None or at is None or at >= start:
                out[sid].add(article_id)
        return dict(out), sorted(deliveries)

    def _load(self, after: datetime | None, upto: datetime | None, ids: Iterable[int] = ()) -> None:
        if ids:
            wanted = [i for i in ids if i not in self.by_id]
            found = load_items(self.session, self.newsletter_id, Article.id.in_(wanted))
        else:
            assert upto is not None
            found = due_items(self.session, self.newsletter_id, after, upto)
        fresh = [i for i in found if i.id not in self.by_id]
        if not fresh:
            return
        for item in fresh:
            self.by_id[item.id] = item
        self.held = self.held.merged(
            reservations_for(self.session, self.newsletter_id, fresh, self.exclude_digest)
        )

    def ensure(self, since: datetime) -> None:
        """Every article due in (since, cut] is loaded."""
        if self.loaded_after is not None and since < self.loaded_after:
            self._load(since, self.loaded_after)
            self.loaded_after = since
            self.items = sorted(
                (i for i in self.by_id.values() if i.due_at is not None and i.due_at > since),
                key=_newest_first,
                reverse=True,
            )

    def choose(self, readers: Sequence[Reader], cap: int) -> Choice:
        """Every reader's selection; readers with no history and the same last cut
        and topics share one."""
        since = self.since(readers)
        self.ensure(min(since.values()))
        returned, deliveries = self._returned(readers)
        if returned:
            self._load(None, None, {a for ids in returned.values() for a in ids})
        lo, hi = readers[0].subscription_id, readers[-1].subscription_id
        sent = already_sent(self.session, self.held, between=(lo, hi))
        # Articles due up to the cut; given-back ones come per reader.
        pool = self.items
        fresh: dict[tuple[datetime, frozenset[int]], Selection] = {}
        out: dict[int, Selection] = {}
        for reader in readers:
            sid = reader.subscription_id
            got = sent.get(sid)
            back = returned.get(sid)
            start = since[sid]
            if got is None and not back:
                key = (start, reader.topic_ids)
                chosen = fresh.get(key)
                if chosen is None:
                    chosen = fresh[key] = select_for(
                        pool, reader.topic_ids, set(), set(), cap, since=start
                    )
            else:
                ids, urls = got if got is not None else (set(), set())
                extra = sorted(
                    (self.by_id[a] for a in back or () if a in self.by_id),
                    key=_newest_first,
                    reverse=True,
                )
                chosen = select_for(
                    pool, reader.topic_ids, ids, urls, cap, since=start, returned=extra
                )
            out[sid] = chosen
        return Choice(out, since, deliveries)


def mark_returned(session: Session, delivery_ids: Sequence[int]) -> None:
    """Given-up deliveries whose articles an edition took back: never again."""
    for i in range(0, len(delivery_ids), 1000):
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids[i : i + 1000]))
            .values(returned=True)
            .execution_options(synchronize_session=False)
        )


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
    compact: Sequence[Item],
    view_url: str,
    *,
    window_end: datetime,
    frequency: Frequency,
    slots: Slots,
) -> dict[str, Any]:
    """Everything the digest templates see; reader-specific values are this
    rendering's markers (`slots`), which no article text can spell. `compact`
    are the articles past MAILER_DIGEST_MAX_ARTICLES: title and link only."""
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
    listed = [
        {"title": " ".join(item.title.split()) or "(untitled)", "url": safe_url(item.url)}
        for item in compact
    ]
    site = safe_url(newsletter.site_url) or settings.base_url
    titles = ", ".join(a["title"] for a in articles[:3])
    return {
        "newsletter_name": newsletter.name,
        "frequency": frequency.value,
        "edition_date": window_end.strftime("%d %B %Y"),
        "articles": articles,
        "more_articles": listed,
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
        items[: selection.full],
        items[selection.full :],
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


# PostgreSQL advisory lock namespace for one newsletter's prepares (see serialise_prepares).
PREPARE_LOCK = 17_002


def serialise_prepares(session: Session, newsletter_id: int) -> None:
    """One prepare per newsletter at a time (to the end of its transaction): a
    reader switching frequency between a daily and a weekly edition prepared at
    once would otherwise be chosen by each without seeing the other's rows.
    SQLite's single writer already does this."""
    if is_postgres(session):
        session.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :nl)"),
            {"ns": PREPARE_LOCK, "nl": newsletter_id},
        )


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
    serialise_prepares(session, nl.id)
    # The cut: after it, an arrival waits for the next edition (articles.edition_cut).
    cut = articles.edition_cut(session, nl.id)
    session.refresh(digest)
    if digest.status != "created":  # prepared meanwhile (SQLite takes no row lock)
        result.already = True
        result.ranges = open_ranges(session, digest_id, settings.send_batch_size)
        return result
    digest.cut_at = cut
    plan = Plan(session, nl.id, digest.frequency, cut, exclude_digest=digest.id)
    links = Links.from_settings(settings)
    variant_ids: dict[str, int] = {}

    def variant_for(selection: Selection) -> int:
        key = selection.key
        if key not in variant_ids:
            variant_ids[key] = _make_variant(
                session, settings, renderer, nl, digest, plan.by_id, selection, key, links
            )
        return variant_ids[key]

    for readers in reader_chunks(session, nl.id, digest.frequency, PREPARE_CHUNK):
        queued, skipped = _prepare_chunk(
            session, settings, digest.id, plan, readers, variant_for, now
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
            select(Subscription.id, Subscriber.email, Subscription.confirmed_at)
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
            Reader(
                sid,
                email,
                shared.setdefault(frozenset(topics[sid]), frozenset(topics[sid])),
                confirmed,
            )
            for sid, email, confirmed in rows
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
    plan: Plan,
    readers: Sequence[Reader],
    variant_for: Any,
    now: datetime,
) -> tuple[int, int]:
    """Choose for one chunk of readers and write its delivery rows; (queued, skipped)."""
    hashes = {r.subscription_id: address_hash(r.email) for r in readers}
    blocked = suppressions.suppressed(session, hashes.values())
    choice = plan.choose(readers, settings.digest_max_articles)
    sub_ids: list[int] = []
    variants: list[int | None] = []
    states: list[str] = []
    replies: list[str | None] = []
    for reader in readers:
        sid = reader.subscription_id
        sub_ids.append(sid)
        chosen = choice.selections[sid]
        if hashes[sid] in blocked:
            variants.append(None)
            states.append(DeliveryStatus.SKIPPED.value)
            replies.append("suppressed")
            continue
        if not chosen.article_ids:
            variants.append(None)
            states.append(DeliveryStatus.SKIPPED.value)
            replies.append("nothing new")
            continue
        variants.append(variant_for(chosen))
        states.append(DeliveryStatus.QUEUED.value)
        replies.append(None)
    _insert_deliveries(session, digest_id, sub_ids, variants, states, replies, now)
    mark_returned(session, choice.returned_deliveries)
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
                Subscriber.email_key == email.strip().casefold(),
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
