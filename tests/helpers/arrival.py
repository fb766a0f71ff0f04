"""Editions by arrival as a model, and a driver that plays the same steps on the real store.

The model is the issue's rule written the simplest way, one reader and one
story at a time: a reader's edition carries every story that became due after
their own last cut (the latest edition they were in, or the cut before their
latest opt-in) and matches their topics then, plus what a failed delivery
gave back, minus what they already have. The store does it set-based; the
property test plays random steps on both and compares every edition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import format_datetime

from hypothesis import strategies as st
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.content import articles, feeds, incoming
from mailer.db import is_postgres
from mailer.editions import prepare, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import (
    Article,
    Base,
    Delivery,
    DeliveryStatus,
    DigestVariant,
    Feed,
    Frequency,
    Newsletter,
    Status,
    Subscription,
    utcnow,
)
from mailer.outbound import FetchResult
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs

READERS = 2
STORIES = 3
TOPIC_SETS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset({"a"}),
    frozenset({"b"}),
    frozenset({"a", "b"}),
)
# Published this far from now: a month back (older than MAILER_DIGEST_MAX_AGE), two
# hours back, now, two hours ahead (clamped to now by ingest).
OFFSETS = (timedelta(days=-30), timedelta(hours=-2), timedelta(0), timedelta(hours=2))
SOURCES = ("feed0", "feed1", "api")


def story(i: int) -> str:
    return f"example.org/s/{i}"


def link(source: int, i: int) -> str:
    """Each source spells the same story's link its own way."""
    return (
        f"https://example.org/s/{i}",
        f"https://www.example.org/s/{i}/",
        f"http://example.org/s/{i}?utm_source=cms",
    )[source]


def article_topics(source: int, i: int) -> frozenset[str]:
    return TOPIC_SETS[(source + i) % len(TOPIC_SETS)]


# -- steps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    feed: int
    items: tuple[tuple[int, int, int], ...]  # (story, offset, version)


@dataclass(frozen=True)
class Push:
    item: tuple[int, int, int]


@dataclass(frozen=True)
class Cut:
    frequency: Frequency
    failing: frozenset[int]


@dataclass(frozen=True)
class Join:
    reader: int
    frequency: Frequency
    topics: frozenset[str]


@dataclass(frozen=True)
class Leave:
    reader: int


@dataclass(frozen=True)
class Prefs:
    reader: int
    frequency: Frequency
    topics: frozenset[str]


Step = Poll | Push | Cut | Join | Leave | Prefs

_item = st.tuples(st.integers(0, STORIES - 1), st.integers(0, len(OFFSETS) - 1), st.integers(0, 1))
_reader = st.integers(0, READERS - 1)
_freq = st.sampled_from(list(Frequency))
# A reader with no topic takes everything: the one most often due something.
_topics = st.sampled_from((frozenset(), *TOPIC_SETS))

_poll = st.builds(Poll, st.integers(0, 1), st.lists(_item, min_size=1, max_size=3).map(tuple))
_push = st.builds(Push, _item)
_cut = st.builds(Cut, _freq, st.frozensets(_reader))
# Arrivals and cuts come often, a reader's own changes less: most of what can go
# wrong happens between an arrival and the cuts around it.
_join = st.builds(Join, _reader, _freq, _topics)
_leave = st.builds(Leave, _reader)
_prefs = st.builds(Prefs, _reader, _freq, _topics)
steps = st.lists(
    st.sampled_from(
        (_poll, _poll, _poll, _push, _push, _cut, _cut, _cut, _join, _join, _leave, _prefs)
    ).flatmap(lambda kind: kind),
    min_size=8,
    max_size=30,
)


# -- the model -----------------------------------------------------------------------


@dataclass
class MArticle:
    story: str
    topics: frozenset[str]
    arrived: int
    history: bool


@dataclass
class MReader:
    active: bool = False
    frequency: Frequency = Frequency.DAILY
    topics: frozenset[str] = frozenset()
    confirmed: int | None = None
    last_in: int | None = None
    received: set[str] = field(default_factory=set)
    owed: set[str] = field(default_factory=set)


@dataclass
class Model:
    articles: dict[tuple[str, int], MArticle] = field(default_factory=dict)
    readers: dict[int, MReader] = field(default_factory=dict)
    cuts: dict[Frequency, list[int]] = field(default_factory=dict)
    polled: set[int] = field(default_factory=set)
    clock: int = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def arrive(self, source: int, item: tuple[int, int, int], first_poll: bool) -> None:
        i, offset, _version = item
        key = (SOURCES[source], i)
        if key in self.articles:
            return  # an update: neither due again nor due later
        old = OFFSETS[offset] < -timedelta(days=7)
        self.articles[key] = MArticle(
            story(i), article_topics(source, i), self.tick(), history=first_poll and old
        )

    def poll(self, step: Poll) -> None:
        first = step.feed not in self.polled
        self.polled.add(step.feed)
        for item in step.items:
            self.arrive(step.feed, item, first)

    def join(self, step: Join) -> None:
        reader = self.readers.setdefault(step.reader, MReader())
        if reader.active:
            return  # already active: subscribing again changes nothing
        reader.active, reader.frequency, reader.topics = True, step.frequency, step.topics
        reader.confirmed = self.tick()
        reader.owed = set()  # a fresh start

    def leave(self, step: Leave) -> None:
        if step.reader in self.readers:
            self.readers[step.reader].active = False

    def prefs(self, step: Prefs) -> None:
        reader = self.readers.get(step.reader)
        if reader is not None and reader.active:
            reader.frequency, reader.topics = step.frequency, step.topics

    def cut(self, step: Cut) -> dict[int, set[str]]:
        """What each of the frequency's readers gets in this edition (stories)."""
        at = self.tick()
        earlier = self.cuts.setdefault(step.frequency, [])
        out: dict[int, set[str]] = {}
        for index, reader in sorted(self.readers.items()):
            if not reader.active or reader.frequency is not step.frequency:
                continue
            assert reader.confirmed is not None
            fresh = max((c for c in earlier if c < reader.confirmed), default=0)
            since = max(reader.last_in or 0, fresh)
            due = {
                a.story
                for a in self.articles.values()
                if a.arrived > since
                and not a.history
                and (not reader.topics or a.topics & reader.topics)
            }
            due = (due | reader.owed) - reader.received
            reader.last_in, reader.owed = at, set()
            out[index] = due
            if due and index in step.failing:
                reader.owed = set(due)
            else:
                reader.received |= due
        earlier.append(at)
        return out


# -- the store -------------------------------------------------------------------------


def empty(session: Session) -> None:
    """Every table emptied, ids from 1 again: one store for many examples."""
    if is_postgres(session):
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        session.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    else:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())  # rowids start again from an empty table
    session.commit()


def rss(items: tuple[tuple[int, int, int], ...], source: int) -> bytes:
    now = utcnow()
    entries = "".join(
        f"<item><guid>g{i}</guid><link>{link(source, i)}</link>"
        f"<title>Story {i} v{version}</title>"
        f"<pubDate>{format_datetime(now + OFFSETS[offset])}</pubDate>"
        + "".join(f"<category>{t}</category>" for t in sorted(article_topics(source, i)))
        + "<description>About it.</description></item>"
        for i, offset, version in items
    )
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>F</title>'
        f"<link>https://example.org/</link>{entries}</channel></rss>"
    ).encode()


class Store:
    """The same steps through the real code paths: feed polls, API pushes, opt-ins,
    prepares; the sending itself is written as its outcome (sent, or failed and
    released), which is what every later edition reads."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.renderer = EmailRenderer(settings.email_templates)
        nl = newsletters.create_newsletter(session, "news", "News", "News <news@example.org>")
        self.nl_id = nl.id
        for name in ("a", "b"):
            newsletters.ensure_topic(session, nl, name)
        self.feeds = [
            feeds.add_feed(session, nl, f"https://feeds.example.org/{n}.xml").id for n in (0, 1)
        ]
        session.commit()
        self.subs: dict[int, int] = {}

    def poll(self, step: Poll) -> None:
        feed = self.session.get_one(Feed, self.feeds[step.feed])
        result = FetchResult(feed.url, "ok", rss(step.items, step.feed), "application/rss+xml")
        feeds.record(self.session, feed, result, self.settings)
        self.session.commit()

    def push(self, step: Push) -> None:
        i, offset, version = step.item
        raw = incoming.RawArticle(
            url=link(2, i),
            title=f"Story {i} v{version}",
            guid=f"g{i}",
            published_at=utcnow() + OFFSETS[offset],
            topics=sorted(article_topics(2, i)),
        )
        articles.ingest_batch(
            self.session, [("news", raw)], summary_length=self.settings.summary_length
        )
        self.session.commit()

    def join(self, step: Join) -> None:
        out = subs.subscribe(
            self.session,
            email=f"r{step.reader}@example.org",
            newsletter="news",
            topics=sorted(step.topics),
            frequency=step.frequency.value,
            confirmed=True,
            resend_interval=0,
        )
        assert out.subscription_id is not None
        self.subs[step.reader] = out.subscription_id
        self.session.commit()

    def leave(self, step: Leave) -> None:
        sub = self._sub(step.reader)
        if sub is not None and sub.status is Status.ACTIVE:
            subs.change_status(self.session, sub, Status.UNSUBSCRIBED, source="test")
        self.session.commit()

    def prefs(self, step: Prefs) -> None:
        """What `update_preferences` writes, without a token to sign."""
        sub = self._sub(step.reader)
        if sub is not None and sub.status is Status.ACTIVE:
            nl = self.session.get_one(Newsletter, self.nl_id)
            sub.frequency = step.frequency
            sub.topics = newsletters.resolve_topics(self.session, nl, sorted(step.topics))
        self.session.commit()

    def _sub(self, reader: int) -> Subscription | None:
        sid = self.subs.get(reader)
        return None if sid is None else self.session.get(Subscription, sid)

    def cut(self, step: Cut) -> dict[int, set[str]]:
        """Cut and prepare an edition, then settle it: each reader's stories in it."""
        edition = schedule.create_edition(self.session, self.nl_id, step.frequency, utcnow())
        self.session.commit()
        prepare.prepare(self.session, self.settings, self.renderer, edition.id)
        self.session.commit()
        readers = {sid: r for r, sid in self.subs.items()}
        rows = self.session.execute(
            select(Delivery.id, Delivery.subscription_id, Delivery.status, DigestVariant.id)
            .outerjoin(DigestVariant, DigestVariant.id == Delivery.variant_id)
            .where(Delivery.digest_id == edition.id)
        ).all()
        out: dict[int, set[str]] = {}
        for delivery_id, sid, status, variant_id in rows:
            reader = readers[sid]
            got: set[str] = set()
            if variant_id is not None:
                ids = self.session.get_one(DigestVariant, variant_id).article_ids
                got = set(self.session.scalars(select(Article.story).where(Article.id.in_(ids))))
                assert len(got) == len(ids), "a story twice in one edition"
            out[reader] = got
            if status is not DeliveryStatus.QUEUED:
                continue
            failed = reader in step.failing
            values = (
                {"status": DeliveryStatus.FAILED, "released": True}
                if failed
                else {"status": DeliveryStatus.SENT, "sent_at": utcnow()}
            )
            self.session.execute(update(Delivery).where(Delivery.id == delivery_id).values(values))
        self.session.commit()
        return out

    def sent_twice(self) -> list[tuple[int, str]]:
        """(reader, story) pairs that went out in more than one delivery."""
        rows = self.session.execute(
            select(Delivery.subscription_id, DigestVariant.article_ids)
            .join(DigestVariant, DigestVariant.id == Delivery.variant_id)
            .where(Delivery.status == DeliveryStatus.SENT)
        ).all()
        stories = {i: s for i, s in self.session.execute(select(Article.id, Article.story))}
        seen: set[tuple[int, str]] = set()
        twice: list[tuple[int, str]] = []
        for sid, ids in rows:
            for article_id in ids:
                pair = (sid, stories[article_id])
                if pair in seen:
                    twice.append(pair)
                seen.add(pair)
        return twice


def play(store: Store, model: Model, plan: list[Step]) -> None:
    """Every step on both; each edition's stories per reader must be the model's."""
    for step in plan:
        if isinstance(step, Poll):
            store.poll(step)
            model.poll(step)
        elif isinstance(step, Push):
            store.push(step)
            model.arrive(2, step.item, first_poll=False)
        elif isinstance(step, Join):
            store.join(step)
            model.join(step)
        elif isinstance(step, Leave):
            store.leave(step)
            model.leave(step)
        elif isinstance(step, Prefs):
            store.prefs(step)
            model.prefs(step)
        else:
            got = store.cut(step)
            want = model.cut(step)
            assert got == want, f"edition after {step}: store {got} != model {want}"


def drain(store: Store, model: Model) -> None:
    """Editions of both frequencies with nothing failing, until nothing is owed."""
    for _ in range(2):
        for frequency in Frequency:
            step = Cut(frequency, frozenset())
            got, want = store.cut(step), model.cut(step)
            assert got == want, f"drain {step}: store {got} != model {want}"
