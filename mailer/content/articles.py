"""Article ingest: every source (feed, API, page) ends in `upsert_article` here.

Whatever arrives from outside is untrusted: before anything is stored it
goes through `content.incoming.normalise` (plain-text titles, the one
article cleaner and nh3 for HTML, absolute http(s) links, UTC dates, the
summary cut near `summary_length`). What the source sent for the summary
and the body is kept beside the cleaned text (`raw_summary`,
`raw_content`), so an operator can see what the cleaner removed. This
module is the storing side: topics made within a budget, the arrival time
and edition cut under one lock, the upsert, and pushed batches.

An article is unique per (source, guid). The source says where it came
from (`feed:<id>`, `api:<newsletter id>`, `page:<newsletter id>`) so two
newsletters never overwrite each other's guids; the guid falls back to the
canonical link. The same story reaching one newsletter from two sources is
stored twice (each source keeps its own truth) and merged at digest time
by `dedupe_articles`, keyed on `dedupe_key(url)`.

Functions here flush but never commit: the caller owns the unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.canonical import dedupe_key
from mailer.config import Settings
from mailer.content import incoming
from mailer.models import Article, ArticleTopic, Newsletter, Topic, utcnow
from mailer.readers.newsletters import ensure_topic, find_newsletter, slugify


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


# -- URLs and dedupe -------------------------------------------------------------


class HasURL(Protocol):
    url: str


A = TypeVar("A", bound=HasURL)


def dedupe_articles(articles: Iterable[A]) -> list[A]:
    """Each story once: the first article per `dedupe_key(url)` wins, order kept.

    For the digest: pass a newsletter's candidate articles ordered by
    preference (e.g. newest `published_at` first) and the same story
    reaching the newsletter from two feeds, or a feed and the API, is sent
    once. Articles are not merged; topics of the dropped copies are ignored.
    """
    seen: set[str] = set()
    kept: list[A] = []
    for article in articles:
        key = dedupe_key(article.url)
        if key in seen:
            continue
        seen.add(key)
        kept.append(article)
    return kept


# -- topics and storing ------------------------------------------------------------


@dataclass
class TopicBudget:
    """How many topics text from outside may still create.

    Every feed category, API topic or page tag used to become a topic: one
    feed of 200 items with 25 categories each made 4,000, and every one of them
    a checkbox on the subscribe page. A new topic is made only while the
    newsletter has fewer than `per_newsletter` topics and, for a feed, while its
    articles carry fewer than `per_feed`; past that the name is left out (the
    article is stored, with the topics that exist) and kept in `refused`, so
    the caller says so: the feed's `last_error`, the API's answer, the log.
    Topics an operator names (`mailer topic`, `feed add --topic`) are not capped.
    """

    per_newsletter: int
    per_feed: int | None = None
    feed_source: str | None = None
    refused: list[tuple[str, str]] = field(default_factory=list)  # (newsletter slug, name)
    _feed_topics: set[int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, feed_source: str | None = None) -> TopicBudget:
        """The budget of one feed's poll (`feed_source`), or of one push or page import."""
        per_feed = settings.max_topics_per_feed if feed_source else None
        return cls(settings.max_topics_per_newsletter, per_feed, feed_source)

    def may_create(self, session: Session, existing: int) -> bool:
        """Whether one more topic may be made, the newsletter having `existing`."""
        if existing >= self.per_newsletter:
            return False
        return self.per_feed is None or len(self.feed_topics(session)) < self.per_feed

    def feed_topics(self, session: Session) -> set[int]:
        """The distinct topics the feed's articles carry, asked once, then kept up to date."""
        if self._feed_topics is None:
            self._feed_topics = set(
                session.scalars(
                    select(ArticleTopic.topic_id)
                    .join(Article, Article.id == ArticleTopic.article_id)
                    .where(Article.source == self.feed_source)
                    .distinct()
                )
            )
        return self._feed_topics

    def carried(self, topics: Iterable[Topic]) -> None:
        if self._feed_topics is not None:
            self._feed_topics.update(t.id for t in topics)

    def describe(self) -> str:
        """One line for a log, a feed's last_error or an API answer."""
        names = sorted({name for _, name in self.refused})
        shown = ", ".join(repr(n) for n in names[:5]) + (" …" if len(names) > 5 else "")
        caps = f"MAILER_MAX_TOPICS_PER_NEWSLETTER={self.per_newsletter}"
        if self.per_feed is not None:
            caps += f", MAILER_MAX_TOPICS_PER_FEED={self.per_feed}"
        return f"topic cap reached ({caps}): {len(names)} new topic(s) not created: {shown}"


def map_topics(
    session: Session,
    newsletter: Newsletter,
    names: Iterable[str],
    budget: TopicBudget | None = None,
) -> list[Topic]:
    """The newsletter's topics for these names: by slug or by (renamed) name, else created
    (while `budget` allows: outside text is capped, an operator's names are not).

    Matching the current name as well as the slug means a topic an operator
    renamed ("tech" shown as "Technology") keeps catching both spellings.
    """
    names = [n for n in names if n and n.strip()]
    if not names:
        return []
    existing = session.scalars(select(Topic).where(Topic.newsletter_id == newsletter.id)).all()
    count = len(existing)
    by_key: dict[str, Topic] = {}
    for topic in existing:
        by_key.setdefault(topic.slug, topic)
        by_key.setdefault(topic.name.casefold(), topic)
    found: dict[int, Topic] = {}
    for name in names:
        known = by_key.get(name.casefold()) or by_key.get(slugify(name))
        if known is not None:
            topic = known
        elif budget is not None and not budget.may_create(session, count):
            budget.refused.append((newsletter.slug, name))
            continue
        else:
            topic = ensure_topic(session, newsletter, name)
            count += 1
        by_key.setdefault(topic.slug, topic)
        by_key.setdefault(topic.name.casefold(), topic)
        found[topic.id] = topic
        if budget is not None:
            budget.carried([topic])
    return sorted(found.values(), key=lambda t: t.name)


def rename_topic(session: Session, newsletter: Newsletter, slug: str, new_name: str) -> Topic:
    """Change the name readers see; the slug stays, so links and preferences keep working."""
    name = " ".join(new_name.split())
    if not name or len(name) > incoming.MAX_TOPIC:
        raise incoming.ArticleError(
            "name", f"a topic name is 1-{incoming.MAX_TOPIC} characters on one line"
        )
    topics = session.scalars(select(Topic).where(Topic.newsletter_id == newsletter.id)).all()
    topic = next((t for t in topics if t.slug == slug), None)
    if topic is None:
        raise incoming.ArticleError("slug", f"newsletter {newsletter.slug!r} has no topic {slug!r}")
    for other in topics:
        if other.id != topic.id and (
            other.name.casefold() == name.casefold() or other.slug == slugify(name)
        ):
            raise incoming.ArticleError(
                "name", f"topic {other.slug!r} is already called or slugged {other.name!r}"
            )
    topic.name = name
    session.flush()
    return topic


_COMPARED = (
    "url",
    "title",
    "summary",
    "content_html",
    "image_url",
    "author",
    "published_at",
    "raw_summary",
    "raw_content",
)


# -- arrival -------------------------------------------------------------------------

# PostgreSQL advisory lock namespace (first key; the second is the newsletter's id).
ARRIVAL_LOCK = 17_001


def arrival_time(session: Session, newsletter_id: int) -> datetime:
    """The moment an article arrives, taken so that no edition's cut can pass it unseen.

    Every edition compares arrival times with the moment it is cut
    (`edition_cut`). A time read before the transaction that stores the
    article commits could lie before a cut that does not see the article
    yet; so the time is read under a lock the cut must wait for. On
    PostgreSQL: a shared advisory lock on the newsletter, held to commit, and
    the database's own clock (one clock for every host). On SQLite, whose
    writers go one at a time: the write lock, taken by a write before the
    clock is read.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock_shared(:ns, :nl)"),
            {"ns": ARRIVAL_LOCK, "nl": newsletter_id},
        )
        stamp = session.scalar(text("SELECT clock_timestamp()"))
        assert isinstance(stamp, datetime)
        return stamp.astimezone(UTC)
    _take_write_lock(session, newsletter_id)
    return utcnow()


def _take_write_lock(session: Session, newsletter_id: int) -> None:
    """SQLite: a write that changes nothing, so this transaction holds the write lock."""
    session.execute(
        text("UPDATE newsletter SET paused = paused WHERE id = :nl"), {"nl": newsletter_id}
    )


def edition_cut(session: Session, newsletter_id: int) -> datetime:
    """The moment an edition is cut: after every arrival that read an earlier time
    has committed, and before any arrival that will read a later one.

    On PostgreSQL the exclusive side of `arrival_time`'s lock is taken and let go
    at once (arrivals wait a moment, never for the whole prepare); its clock is
    read while it is held. On SQLite the caller's write lock does the same and
    is held until the edition's transaction ends.
    """
    if session.get_bind().dialect.name == "postgresql":
        params = {"ns": ARRIVAL_LOCK, "nl": newsletter_id}
        session.execute(text("SELECT pg_advisory_lock(:ns, :nl)"), params)
        try:
            stamp = session.scalar(text("SELECT clock_timestamp()"))
        finally:
            session.execute(text("SELECT pg_advisory_unlock(:ns, :nl)"), params)
        assert isinstance(stamp, datetime)
        return stamp.astimezone(UTC)
    _take_write_lock(session, newsletter_id)
    return utcnow()


def upsert_article(
    session: Session,
    newsletter: Newsletter,
    source: str,
    clean: incoming.CleanArticle,
    *,
    extra_topics: Sequence[str] = (),
    budget: TopicBudget | None = None,
    due: bool = True,
) -> tuple[Article, Outcome]:
    """Insert or update the article for (source, guid); never a second row.

    A re-sent article without a date keeps the date it got when first seen,
    so an undated item does not look new again on every poll. A race with a
    concurrent insert of the same guid is settled by the unique constraint:
    the loser updates the winner's row. `extra_topics` are the operator's (a
    feed's or an import's own) and uncapped; the article's own go by `budget`.
    A new article is due from its arrival unless `due` is False (history: a new
    feed's back catalogue); an update changes neither, so a not-yet-sent article
    goes out once, with its latest content.
    """
    named = {
        t.id: t
        for t in (
            *map_topics(session, newsletter, extra_topics),
            *map_topics(session, newsletter, clean.topics, budget),
        )
    }
    topics = sorted(named.values(), key=lambda t: t.name)
    existing = _find(session, source, clean.guid)
    if existing is None:
        arrived = arrival_time(session, newsletter.id)
        article = Article(
            arrived_at=arrived,
            due_at=arrived if due else None,
            newsletter_id=newsletter.id,
            source=source,
            guid=clean.guid,
            url=clean.url,
            title=clean.title,
            summary=clean.summary,
            content_html=clean.content_html,
            image_url=clean.image_url,
            author=clean.author,
            published_at=clean.published_at,
            raw_summary=clean.raw_summary,
            raw_content=clean.raw_content,
            topics=topics,
        )
        try:
            with session.begin_nested():
                session.add(article)
                session.flush()
            return article, Outcome.CREATED
        except IntegrityError:
            existing = _find(session, source, clean.guid)
            if existing is None:
                raise
    if existing.newsletter_id != newsletter.id:
        raise incoming.ArticleError(
            "guid", f"{clean.guid!r} belongs to another newsletter's source"
        )
    changed = False
    for name in _COMPARED:
        new = getattr(clean, name)
        if name == "published_at" and not clean.date_given:
            continue  # no real date this time: the first-seen date stands
        if getattr(existing, name) != new:
            setattr(existing, name, new)
            changed = True
    if {t.id for t in existing.topics} != {t.id for t in topics}:
        existing.topics = topics
        changed = True
    if changed:
        existing.updated_at = utcnow()
        session.flush()
    return existing, Outcome.UPDATED if changed else Outcome.UNCHANGED


def _find(session: Session, source: str, guid: str) -> Article | None:
    return session.scalar(select(Article).where(Article.source == source, Article.guid == guid))


def api_source(newsletter: Newsletter) -> str:
    return f"api:{newsletter.id}"


def page_source(newsletter: Newsletter) -> str:
    return f"page:{newsletter.id}"


def feed_source(feed_id: int) -> str:
    return f"feed:{feed_id}"


# -- pushed batches (the API) -------------------------------------------------------


class BatchRejected(ValueError):
    """Some items of a batch are invalid; none was stored. `errors` is (index, field, message)."""

    def __init__(self, errors: list[tuple[int, str, str]]) -> None:
        super().__init__("; ".join(f"item {i}: {f}: {m}" for i, f, m in errors))
        self.errors = errors


def ingest_batch(
    session: Session,
    items: Sequence[tuple[str | None, incoming.RawArticle]],
    *,
    summary_length: int,
    budget: TopicBudget | None = None,
    now: datetime | None = None,
) -> list[tuple[Article, Outcome]]:
    """Store pushed articles, each under its newsletter slug; all of them or none.

    Everything is checked before the first write, so a CMS that sends one bad
    item among fifty gets every error at once and can simply send the batch
    again once fixed. A guid sent twice updates the first; never a duplicate.
    """
    now = now or utcnow()
    newsletters: dict[str, Newsletter | None] = {}
    errors: list[tuple[int, str, str]] = []
    ready: list[tuple[Newsletter, incoming.CleanArticle]] = []
    for index, (slug, raw) in enumerate(items):
        if not slug:
            errors.append((index, "newsletter", "the newsletter's slug is required"))
            continue
        if slug not in newsletters:
            newsletters[slug] = find_newsletter(session, slug)
        newsletter = newsletters[slug]
        if newsletter is None:
            errors.append((index, "newsletter", f"there is no newsletter called {slug!r}"))
            continue
        try:
            clean = incoming.normalise(
                raw, base_url=None, now=now, summary_length=summary_length, strict=True
            )
        except incoming.ArticleError as exc:
            errors.append((index, exc.field, exc.message))
            continue
        ready.append((newsletter, clean))
    if errors:
        raise BatchRejected(errors)
    return [
        upsert_article(session, nl, api_source(nl), clean, budget=budget) for nl, clean in ready
    ]
