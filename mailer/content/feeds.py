"""Feeds: fetch politely, parse leniently, fail alone.

A poll is a conditional GET (ETag / Last-Modified) with a User-Agent, a
timeout on the whole exchange and a size cap enforced while streaming, so a
slow or endless feed can't hold a worker or fill its memory. A feed that
fails keeps its last good state (validators, title, articles), records the
error and backs off exponentially; errors never leave `poll`, so one broken
feed never stops the others.

The network call happens outside any database transaction: `poll` reads
what it needs, closes that unit of work, fetches, then records the result
in a second one. That is why it takes settings and opens its own sessions
instead of taking the caller's session like the rest of the domain.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import feedparser
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.content.articles import Outcome, TopicBudget, feed_source, map_topics, upsert_article
from mailer.content.incoming import ArticleError, CleanArticle, RawArticle, html_to_text, normalise
from mailer.db import is_postgres, session_scope
from mailer.models import Feed, Newsletter, utcnow
from mailer.outbound import FetchResult, fetch

log = logging.getLogger(__name__)

MIN_INTERVAL = 60
MAX_INTERVAL = 7 * 86400
MAX_BACKOFF = 6 * 3600
# `feed add --backfill-days` at most ten years.
MAX_BACKFILL_DAYS = 3650
# A claimed feed is not claimed again for this long, in case its task is lost.
CLAIM_LEASE = 600


class FeedError(ValueError):
    """A feed we refuse to add or cannot read; the message says which and why,
    `field` names the input it is about when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FeedExists(FeedError):
    pass


# -- parsing -------------------------------------------------------------------------


@dataclass
class ParsedFeed:
    title: str | None
    entries: list[RawArticle] = field(default_factory=list)
    problem: str | None = None  # what feedparser had to forgive, if anything


def _struct_to_dt(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        year, month, day, hour, minute, second = (int(v) for v in value[:6])
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def _entry_image(entry: Any) -> str | None:
    """The image the feed names for the entry; without one, `normalise` takes the first
    image the cleaner keeps in its content (never a tracking pixel)."""
    for media in (*entry.get("media_content", []), *entry.get("media_thumbnail", [])):
        url = media.get("url")
        kind = media.get("type", "") or media.get("medium", "") or "image"
        if url and "image" in kind:
            return str(url)
    for link in entry.get("links", []):
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/"):
            return str(link.get("href"))
    return None


def entry_to_raw(entry: Any) -> RawArticle:
    """One feedparser entry as a raw article; feedparser has already resolved relative links."""
    content = ""
    for part in entry.get("content", []):
        if "html" in str(part.get("type", "")):
            content = str(part.get("value", ""))
            break
    if not content and entry.get("content"):
        content = str(entry.content[0].get("value", ""))
    summary = str(entry.get("summary", "") or "")
    content = content or summary
    # dict.get, not entry.get: feedparser's own get() maps keys with a deprecation warning.
    published = (
        _struct_to_dt(dict.get(entry, "published_parsed"))
        or _struct_to_dt(dict.get(entry, "updated_parsed"))
        or _struct_to_dt(dict.get(entry, "created_parsed"))
    )
    tags = [str(t.get("term") or t.get("label") or "") for t in entry.get("tags", [])]
    return RawArticle(
        url=entry.get("link"),
        title=entry.get("title"),
        guid=entry.get("id"),
        summary_html=summary,
        content_html=content,
        image_url=_entry_image(entry),
        author=entry.get("author"),
        published_at=published,
        topics=[t for t in tags if t.strip()],
    )


def parse(body: bytes, url: str, content_type: str = "") -> ParsedFeed:
    """RSS 0.9x/1.0/2.0 or Atom; FeedError when the body is no feed at all.

    feedparser is lenient: a feed with recoverable errors (a wrong charset,
    an undefined entity) is still read, since its readers would rather get
    the articles than nothing; `problem` keeps what was wrong. The feed's
    URL is not given to feedparser as a base, or it would rewrite plain
    guids ("story-1") into URLs that change whenever the feed moves;
    relative links are resolved in `incoming.normalise` instead (xml:base
    still applies).
    """
    headers = {}
    if "charset=" in content_type.lower():
        headers["content-type"] = content_type
    parsed = feedparser.parse(body, response_headers=headers, sanitize_html=True)
    problem = str(parsed.get("bozo_exception") or "") if parsed.bozo else None
    if not parsed.entries and (parsed.bozo or not parsed.version):
        raise FeedError(f"not a readable feed: {problem or 'no RSS or Atom document found'}")
    title = html_to_text(str(parsed.feed.get("title", ""))) or None
    return ParsedFeed(
        title=title, entries=[entry_to_raw(e) for e in parsed.entries], problem=problem
    )


# -- the store -----------------------------------------------------------------------


def validate_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FeedError(f"a feed URL must be an absolute http(s) URL, got {url!r}", "url")
    if len(url) > 2000:
        raise FeedError("a feed URL is at most 2000 characters", "url")
    return url.strip()


def add_feed(
    session: Session,
    newsletter: Newsletter,
    url: str,
    *,
    topics: list[str] | None = None,
    interval: int | None = None,
    settings: Settings | None = None,
    backfill_days: int | None = None,
) -> Feed:
    """A new feed, due at once; its topics exist from now on so readers can pick them.

    `backfill_days`: on its first poll, items published within that many days
    are due to readers (default MAILER_DIGEST_MAX_AGE); older ones are history.
    """
    url = validate_url(url)
    if backfill_days is not None and not 0 <= backfill_days <= MAX_BACKFILL_DAYS:
        raise FeedError(
            f"backfill is 0-{MAX_BACKFILL_DAYS} days, got {backfill_days}", "backfill_days"
        )
    every = check_interval(
        interval if interval is not None else (settings.feed_poll_interval if settings else 900)
    )
    exists = session.scalar(
        select(Feed.id).where(Feed.newsletter_id == newsletter.id, Feed.url == url)
    )
    if exists is not None:
        raise FeedExists(
            f"newsletter {newsletter.slug!r} already has the feed {url} (id {exists})", "url"
        )
    names = [t.name for t in map_topics(session, newsletter, topics or [])]
    feed = Feed(
        newsletter_id=newsletter.id,
        url=url,
        topics=names,
        interval=every,
        backfill_days=backfill_days,
    )
    session.add(feed)
    session.flush()
    return feed


def check_interval(seconds: int) -> int:
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise FeedError(
            f"the interval is {MIN_INTERVAL}-{MAX_INTERVAL} seconds, got {seconds}", "interval"
        )
    return seconds


def edit_feed(
    session: Session,
    feed: Feed,
    *,
    interval: int | None = None,
    topics: list[str] | None = None,
) -> Feed:
    """Change how often a feed is polled and which topics its articles get from now on.

    `topics` replaces the feed's list (an empty list clears it); articles
    already stored keep the topics they have. A shorter interval takes effect
    at once: the next poll moves up if the new interval brings it closer.
    """
    if interval is None and topics is None:
        raise FeedError("nothing to change: give an interval or topics")
    every = check_interval(interval) if interval is not None else None
    if topics is not None:
        newsletter = session.get_one(Newsletter, feed.newsletter_id)
        feed.topics = [t.name for t in map_topics(session, newsletter, topics)]
    if every is not None:
        feed.interval = every
        if feed.last_polled_at is not None and feed.next_poll_at is not None:
            feed.next_poll_at = min(
                feed.next_poll_at, feed.last_polled_at + timedelta(seconds=every)
            )
    session.flush()
    return feed


def set_paused(session: Session, feed: Feed, paused: bool) -> Feed:
    """A paused feed keeps everything but is not polled; resumed, it is due at once."""
    if feed.paused != paused:
        feed.paused = paused
        if not paused:
            feed.next_poll_at = None
    session.flush()
    return feed


def backoff(interval: int, errors: int) -> int:
    """Seconds until the next try after `errors` failures in a row: doubling, capped."""
    return int(min(max(interval, MIN_INTERVAL) * 2 ** min(errors, 16), MAX_BACKOFF))


def pollable() -> Any:
    """Feeds that are polled: not paused, of a newsletter that is not archived."""
    return Feed.paused.is_(False) & Feed.newsletter_id.in_(
        select(Newsletter.id).where(Newsletter.archived_at.is_(None))
    )


def claim_due_feeds(
    session: Session,
    *,
    now: datetime | None = None,
    limit: int = 100,
    newsletter_id: int | None = None,
) -> list[int]:
    """Feeds due for a poll, pushed CLAIM_LEASE ahead so the next tick doesn't send them twice."""
    now = now or utcnow()
    where = [or_(Feed.next_poll_at.is_(None), Feed.next_poll_at <= now), pollable()]
    if newsletter_id is not None:
        where.append(Feed.newsletter_id == newsletter_id)
    query = (
        select(Feed).where(*where).order_by(Feed.next_poll_at.nulls_first(), Feed.id).limit(limit)
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    feeds = session.scalars(query).all()
    for feed in feeds:
        feed.next_poll_at = now + timedelta(seconds=CLAIM_LEASE)
    session.flush()
    return [feed.id for feed in feeds]


@dataclass
class PollReport:
    feed_id: int
    url: str
    status: str  # "ok" | "not_modified" | "error" | "missing"
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    error: str | None = None
    next_poll_at: datetime | None = None
    note: str | None = None  # what went right but not all the way (the topic cap)

    def describe(self) -> str:
        if self.status == "ok":
            return (
                f"{self.created} new, {self.updated} updated, {self.unchanged} unchanged"
                + (f", {self.skipped} skipped" if self.skipped else "")
                + (f"; {self.note}" if self.note else "")
            )
        if self.status == "not_modified":
            return "not modified"
        return f"error: {self.error}"


def record(
    session: Session,
    feed: Feed,
    result: FetchResult,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> PollReport:
    """Store what one fetch gave: articles and fresh validators, or the error and a backoff."""
    now = now or utcnow()
    feed.last_polled_at = now
    report = PollReport(feed.id, feed.url, result.status)
    parsed: ParsedFeed | None = None
    ready: list[CleanArticle] = []
    if result.status == "ok":
        try:
            parsed = parse(result.body, result.url, result.content_type)
            for raw in parsed.entries:
                try:
                    ready.append(
                        normalise(
                            raw,
                            base_url=result.url,
                            now=now,
                            summary_length=settings.summary_length,
                        )
                    )
                except ArticleError as exc:
                    report.skipped += 1
                    log.info("feed %s: skipped an entry: %s", feed.id, exc)
            if parsed.problem and not ready:
                raise FeedError(f"malformed feed with no usable entry: {parsed.problem}")
        except FeedError as exc:
            report.status, result.error = "error", str(exc)
    if report.status == "error":
        feed.error_count += 1
        feed.last_error = (result.error or "unknown error")[:2000]
        wait = backoff(feed.interval, feed.error_count)
        if result.retry_after:
            wait = max(wait, min(result.retry_after, MAX_INTERVAL))
        feed.next_poll_at = now + timedelta(seconds=wait)
        report.error = feed.last_error
        report.next_poll_at = feed.next_poll_at
        session.flush()
        return report
    budget = TopicBudget.from_settings(settings, feed_source(feed.id))
    # A new feed's back catalogue is history: only what is recent enough is due.
    history_before: datetime | None = None
    if feed.last_success_at is None:
        history_before = now - (
            timedelta(days=feed.backfill_days)
            if feed.backfill_days is not None
            else timedelta(seconds=settings.digest_max_age)
        )
    if parsed is not None:
        newsletter = session.get(Newsletter, feed.newsletter_id)
        assert newsletter is not None  # the FK cascades: a feed never outlives it
        source = feed_source(feed.id)
        for clean in ready:
            due = history_before is None or clean.published_at >= history_before
            _, outcome = upsert_article(
                session,
                newsletter,
                source,
                clean,
                extra_topics=feed.topics or [],
                budget=budget,
                due=due,
            )
            if outcome is Outcome.CREATED:
                report.created += 1
            elif outcome is Outcome.UPDATED:
                report.updated += 1
            else:
                report.unchanged += 1
        if parsed.title:
            feed.title = parsed.title[:500]
        feed.etag = (result.etag or None) and result.etag[:500]
        feed.last_modified = (result.last_modified or None) and result.last_modified[:200]
    feed.last_success_at = now
    feed.error_count = 0
    feed.last_error = None
    if budget.refused:
        # Stored, but not every category became a topic: said where the operator looks.
        report.note = feed.last_error = budget.describe()[:2000]
        log.warning("feed %s: %s", feed.id, report.note)
    feed.next_poll_at = now + timedelta(seconds=feed.interval)
    report.next_poll_at = feed.next_poll_at
    session.flush()
    return report


def poll(settings: Settings, feed_id: int) -> PollReport:
    """Fetch one feed and record the outcome; never raises for anything the feed did."""
    with session_scope(settings.database) as session:
        feed = session.get(Feed, feed_id)
        if feed is None:
            return PollReport(feed_id, "", "missing", error=f"there is no feed {feed_id}")
        url, etag, last_modified = feed.url, feed.etag, feed.last_modified
    result = fetch(url, settings, etag=etag, last_modified=last_modified)
    try:
        with session_scope(settings.database) as session:
            feed = session.get(Feed, feed_id)
            if feed is None:
                return PollReport(feed_id, url, "missing", error=f"feed {feed_id} was removed")
            return record(session, feed, result, settings)
    except Exception as exc:  # a bug or a bad entry must not wedge the feed or its neighbours
        log.exception("feed %s: could not store the poll", feed_id)
        failed = FetchResult(url, "error", error=f"could not store: {type(exc).__name__}: {exc}")
        with session_scope(settings.database) as session:
            feed = session.get(Feed, feed_id)
            if feed is None:
                return PollReport(feed_id, url, "missing", error=f"feed {feed_id} was removed")
            return record(session, feed, failed, settings)


def poll_before_cut(settings: Settings, newsletter_id: int) -> list[PollReport]:
    """Poll a newsletter's due feeds just before its edition is cut, so the edition
    carries what its sites published up to then.

    The feeds are fetched at once, each on its own thread and session, and
    waited for at most MAILER_FEED_TIMEOUT (every fetch is bounded by it too):
    a broken or slow feed never holds the edition longer. A poll still
    running when the wait ends stores its articles after the cut, for the
    next edition. The claim is the tick's (`claim_due_feeds`), so a feed is
    not polled by both.
    """
    with session_scope(settings.database) as session:
        ids = claim_due_feeds(session, limit=1000, newsletter_id=newsletter_id)
    if not ids:
        return []
    pool = ThreadPoolExecutor(max_workers=min(8, len(ids)), thread_name_prefix="cut-poll")
    futures = [pool.submit(poll, settings, feed_id) for feed_id in ids]
    done, late = wait(futures, timeout=settings.feed_timeout + 1.0)
    pool.shutdown(wait=False)
    if late:
        log.warning(
            "newsletter %s: %d feed poll(s) still running at the cut; they go in the next edition",
            newsletter_id,
            len(late),
        )
    return [f.result() for f in done if f.exception() is None]


def poll_due(settings: Settings, *, every_feed: bool = False) -> list[PollReport]:
    """Poll the feeds that are due (or all of them), one after another; for the CLI."""
    with session_scope(settings.database) as session:
        if every_feed:
            ids = list(session.scalars(select(Feed.id).where(pollable()).order_by(Feed.id)))
        else:
            ids = claim_due_feeds(session, limit=10_000)
    return [poll(settings, feed_id) for feed_id in ids]
