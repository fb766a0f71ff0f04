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
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailer.articles import (
    ArticleError,
    CleanArticle,
    Outcome,
    RawArticle,
    feed_source,
    html_to_text,
    map_topics,
    normalise,
    upsert_article,
)
from mailer.config import Settings
from mailer.db import is_postgres, session_scope
from mailer.models import Feed, Newsletter, utcnow

log = logging.getLogger(__name__)

MIN_INTERVAL = 60
MAX_INTERVAL = 7 * 86400
MAX_BACKOFF = 6 * 3600
# A claimed feed is not claimed again for this long, in case its task is lost.
CLAIM_LEASE = 600
MAX_REDIRECTS = 5


class FeedError(ValueError):
    """A feed we refuse to add or cannot read; the message says which and why."""


# -- fetching ----------------------------------------------------------------------


@dataclass
class FetchResult:
    """What one GET gave: a body, "not modified", or an error message."""

    url: str
    status: str  # "ok" | "not_modified" | "error"
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    retry_after: int | None = None


def user_agent(settings: Settings) -> str:
    """Names us and where to find us, so a site owner who sees our polls can ask."""
    return f"mailer/0.1 (newsletter digest; +{settings.base_url})"


def _retry_after(value: str | None) -> int | None:
    if not value:
        return None
    if value.strip().isdigit():
        return int(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int((when - utcnow()).total_seconds()))


def fetch(
    url: str,
    settings: Settings,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    client: httpx.Client | None = None,
    accept: str = "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
) -> FetchResult:
    """GET `url` within `feed_timeout` seconds in all and `feed_max_bytes`; never raises."""
    if urlsplit(url).scheme not in ("http", "https"):
        return FetchResult(url, "error", error="only http and https URLs can be fetched")
    headers = {"User-Agent": user_agent(settings), "Accept": accept}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    own = client is None
    http = client or httpx.Client(
        timeout=httpx.Timeout(settings.feed_timeout),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
    )
    deadline = time.monotonic() + settings.feed_timeout
    limit = settings.feed_max_bytes
    try:
        with http.stream("GET", url, headers=headers) as response:
            final = str(response.url)
            if response.status_code == 304:
                return FetchResult(final, "not_modified", etag=etag, last_modified=last_modified)
            if response.status_code >= 400:
                return FetchResult(
                    final,
                    "error",
                    error=f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                    retry_after=_retry_after(response.headers.get("retry-after"))
                    if response.status_code in (429, 503)
                    else None,
                )
            if response.status_code >= 300:
                return FetchResult(final, "error", error=f"HTTP {response.status_code} redirect")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                return FetchResult(final, "error", error=_too_large(limit))
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    return FetchResult(final, "error", error=_too_large(limit))
                if time.monotonic() > deadline:
                    return FetchResult(final, "error", error=_timed_out(settings))
                chunks.append(chunk)
            return FetchResult(
                final,
                "ok",
                body=b"".join(chunks),
                content_type=response.headers.get("content-type", ""),
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
            )
    except httpx.TimeoutException:
        return FetchResult(url, "error", error=_timed_out(settings))
    except httpx.TooManyRedirects:
        return FetchResult(url, "error", error=f"more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as exc:
        return FetchResult(url, "error", error=f"could not fetch: {type(exc).__name__}: {exc}")
    finally:
        if own:
            http.close()


def _too_large(limit: int) -> str:
    return f"response larger than the {limit}-byte limit (MAILER_FEED_MAX_BYTES)"


def _timed_out(settings: Settings) -> str:
    return f"timed out after {settings.feed_timeout:g} s (MAILER_FEED_TIMEOUT)"


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
    relative links are resolved in `articles.normalise` instead (xml:base
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
        raise FeedError(f"a feed URL must be an absolute http(s) URL, got {url!r}")
    if len(url) > 2000:
        raise FeedError("a feed URL is at most 2000 characters")
    return url.strip()


def add_feed(
    session: Session,
    newsletter: Newsletter,
    url: str,
    *,
    topics: list[str] | None = None,
    interval: int | None = None,
    settings: Settings | None = None,
) -> Feed:
    """A new feed, due at once; its topics exist from now on so readers can pick them."""
    url = validate_url(url)
    every = interval if interval is not None else (settings.feed_poll_interval if settings else 900)
    if not MIN_INTERVAL <= every <= MAX_INTERVAL:
        raise FeedError(f"the interval is {MIN_INTERVAL}-{MAX_INTERVAL} seconds, got {every}")
    exists = session.scalar(
        select(Feed.id).where(Feed.newsletter_id == newsletter.id, Feed.url == url)
    )
    if exists is not None:
        raise FeedError(f"newsletter {newsletter.slug!r} already has the feed {url} (id {exists})")
    names = [t.name for t in map_topics(session, newsletter, topics or [])]
    feed = Feed(newsletter_id=newsletter.id, url=url, topics=names, interval=every)
    session.add(feed)
    session.flush()
    return feed


def backoff(interval: int, errors: int) -> int:
    """Seconds until the next try after `errors` failures in a row: doubling, capped."""
    return int(min(max(interval, MIN_INTERVAL) * 2 ** min(errors, 16), MAX_BACKOFF))


def claim_due_feeds(
    session: Session, *, now: datetime | None = None, limit: int = 100
) -> list[int]:
    """Feeds due for a poll, pushed CLAIM_LEASE ahead so the next tick doesn't send them twice."""
    now = now or utcnow()
    query = (
        select(Feed)
        .where(or_(Feed.next_poll_at.is_(None), Feed.next_poll_at <= now))
        .order_by(Feed.next_poll_at.nulls_first(), Feed.id)
        .limit(limit)
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

    def describe(self) -> str:
        if self.status == "ok":
            return f"{self.created} new, {self.updated} updated, {self.unchanged} unchanged" + (
                f", {self.skipped} skipped" if self.skipped else ""
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
    if parsed is not None:
        newsletter = session.get(Newsletter, feed.newsletter_id)
        assert newsletter is not None  # the FK cascades: a feed never outlives it
        source = feed_source(feed.id)
        for clean in ready:
            _, outcome = upsert_article(
                session, newsletter, source, clean, extra_topics=feed.topics or []
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
    feed.next_poll_at = now + timedelta(seconds=feed.interval)
    report.next_poll_at = feed.next_poll_at
    session.flush()
    return report


def poll(settings: Settings, feed_id: int, *, client: httpx.Client | None = None) -> PollReport:
    """Fetch one feed and record the outcome; never raises for anything the feed did."""
    with session_scope(settings.database) as session:
        feed = session.get(Feed, feed_id)
        if feed is None:
            return PollReport(feed_id, "", "missing", error=f"there is no feed {feed_id}")
        url, etag, last_modified = feed.url, feed.etag, feed.last_modified
    result = fetch(url, settings, etag=etag, last_modified=last_modified, client=client)
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


def poll_due(
    settings: Settings, *, every_feed: bool = False, client: httpx.Client | None = None
) -> list[PollReport]:
    """Poll the feeds that are due (or all of them), one after another; for the CLI."""
    with session_scope(settings.database) as session:
        if every_feed:
            ids = list(session.scalars(select(Feed.id).order_by(Feed.id)))
        else:
            ids = claim_due_feeds(session, limit=10_000)
    return [poll(settings, feed_id, client=client) for feed_id in ids]
