"""What arrives, made safe: an article from outside checked and normalised.

Every source (feed, API, page) hands its `RawArticle` to `normalise`, which
returns the `CleanArticle` that `articles.upsert_article` stores. Nothing
here touches the database: titles, authors and topic names become plain
text; article HTML goes through the one article cleaner and then nh3 with a
small allow-list, links and images made absolute and anything but
http(s)/mailto dropped; dates become timezone-aware UTC; the summary is the
article's lead as plain text. The column limits (`MAX_*`) live here because
this is where longer values are refused (API) or cut (feeds).
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import nh3

from mailer.canonical import canonical_url
from mailer.content.cleaner import (
    MAX_CONTENT,
    TEXT_BREAKS,
    WHITESPACE,
    clean,
    cut_summary,
    summarise,
)
from mailer.models import utcnow
from mailer.readers.newsletters import slugify

# Column sizes in models.Article; longer values are refused (API) or cut (feeds).
MAX_URL = 2000
MAX_GUID = 2000
MAX_TITLE = 1000
MAX_AUTHOR = 300
MAX_TOPIC = 200
MAX_TOPICS = 20
# Markup around a title, an author or a topic read at most: nh3 is quadratic on deep nesting.
MAX_FIELD_MARKUP = 20_000

ALLOWED_TAGS = {
    "a",
    "b",
    "blockquote",
    "br",
    "code",
    "em",
    "figcaption",
    "figure",
    "h2",
    "h3",
    "h4",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "strong",
    "ul",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"}}
URL_SCHEMES = {"http", "https", "mailto"}
# Removed together with everything inside them, not just unwrapped.
DROP_WITH_CONTENT = {"script", "style", "noscript", "template", "iframe", "object", "svg", "math"}

_BLOCK_TAG = re.compile(rf"<(?=/?(?:{'|'.join(sorted(TEXT_BREAKS))})\b)", re.I)
_LOOKS_LIKE_TAG = re.compile(r"<[/!a-zA-Z]")


class ArticleError(ValueError):
    """An article we refuse; `field` names the input at fault for API answers."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class RawArticle:
    """An article as a source gave it: every field untrusted, HTML allowed where noted."""

    url: str | None
    title: str | None
    guid: str | None = None
    summary_html: str | None = None
    content_html: str | None = None
    image_url: str | None = None
    author: str | None = None
    published_at: datetime | None = None
    topics: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CleanArticle:
    """Safe to store: text is text, HTML is sanitised, URLs absolute, dates UTC."""

    guid: str
    url: str
    title: str
    summary: str
    content_html: str
    image_url: str | None
    author: str | None
    published_at: datetime
    topics: tuple[str, ...]
    # False when the source gave no date (or one in the future) and fetch time stands in.
    date_given: bool = True
    # What the source sent for the summary and the body, before any cleaning.
    raw_summary: str | None = None
    raw_content: str | None = None


# -- text and HTML -------------------------------------------------------------


def html_to_text(value: str | None) -> str:
    """Plain text of an HTML fragment, entities decoded, whitespace collapsed.

    Script and style content goes with the tags. Runs twice so that markup
    escaped once more than it should be (common in feed titles) is dropped
    rather than shown to readers as a literal tag. In that second round an
    element such as `<script>` that is never closed is a tag written as text
    ("Why &lt;script&gt; tags are dangerous"): only the tag goes, not every
    word after it, as the article cleaner does for bodies (`cleaner._plain`).
    """
    if not value:
        return ""
    text = value
    dropped = DROP_WITH_CONTENT
    # What an unclosed <style> holds is raw text, so it may hold more tags: a few rounds.
    for _ in range(4):
        spaced = _BLOCK_TAG.sub(" <", text)
        text = html.unescape(nh3.clean(spaced, tags=set(), clean_content_tags=dropped))
        if not _LOOKS_LIKE_TAG.search(text):
            break
        dropped = {tag for tag in DROP_WITH_CONTENT if _closed(text, tag)}
    else:
        text = text.replace("<", "")  # tags in tags in tags: built to be shown, never shown
    return WHITESPACE.sub(" ", text).strip()


def _closed(text: str, tag: str) -> bool:
    """Whether every `<tag` in the text has its `</tag` (linear, for any input)."""
    lowered = text.lower()
    return lowered.count(f"<{tag}") <= lowered.count(f"</{tag}")


def _safe_url(value: str | None, base: str | None, schemes: set[str] = URL_SCHEMES) -> str | None:
    """An absolute URL with an allowed scheme, or None."""
    if not value:
        return None
    value = "".join(ch for ch in value.strip() if ch >= " ")  # no control characters
    if not value:
        return None
    try:
        absolute = urljoin(base, value) if base else value
        parts = urlsplit(absolute)
    except ValueError:
        return None
    if parts.scheme.lower() not in schemes:
        return None
    if parts.scheme.lower() in ("http", "https") and not parts.hostname:
        return None
    return absolute


def sanitise_html(value: str | None, base_url: str | None) -> str:
    """The allow-listed HTML of an untrusted fragment with absolute links and images."""
    if not value:
        return ""

    def attribute_filter(tag: str, attr: str, val: str) -> str | None:
        if (tag, attr) in (("a", "href"), ("img", "src")):
            schemes = URL_SCHEMES if tag == "a" else {"http", "https"}
            return _safe_url(val, base_url, schemes)
        return val

    cleaned = nh3.clean(
        value[:MAX_CONTENT],
        tags=ALLOWED_TAGS,
        clean_content_tags=DROP_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=attribute_filter,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    return cleaned.strip()


# -- normalising -----------------------------------------------------------------


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken to be UTC already (feedparser gives UTC tuples)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def clean_topics(names: Iterable[str]) -> tuple[str, ...]:
    """Topic names as text, one per slug, at most MAX_TOPICS so a feed can't flood them."""
    seen: dict[str, str] = {}
    for name in names:
        text = html_to_text(name[:MAX_FIELD_MARKUP])[:MAX_TOPIC].strip()
        if not text:
            continue
        seen.setdefault(slugify(text), text)
        if len(seen) >= MAX_TOPICS:
            break
    return tuple(seen.values())


def normalise(
    raw: RawArticle,
    *,
    base_url: str | None,
    now: datetime | None = None,
    summary_length: int = 280,
    strict: bool = False,
) -> CleanArticle:
    """Make a raw article safe to store, or raise ArticleError naming the field.

    `strict` is for callers who can fix their input (the API): values too long
    for the store are refused there, where a feed's are cut.
    """
    now = now or utcnow()
    url = _safe_url(raw.url, base_url, {"http", "https"})
    if url is None:
        raise ArticleError("url", "an absolute http(s) link is required")
    url = canonical_url(url)
    if len(url) > MAX_URL:
        raise ArticleError("url", f"longer than {MAX_URL} characters")

    guid = " ".join((raw.guid or "").split())
    if not guid:
        guid = url
    if len(guid) > MAX_GUID:
        if strict:
            raise ArticleError("guid", f"longer than {MAX_GUID} characters")
        guid = "sha256:" + hashlib.sha256(guid.encode()).hexdigest()

    title = html_to_text((raw.title or "")[:MAX_FIELD_MARKUP])
    body = clean(raw.content_html, title=title)
    described = (
        body if raw.summary_html == raw.content_html else clean(raw.summary_html, title=title)
    )
    content = sanitise_html(body.html, base_url or url)
    summary = summarise(described, body, summary_length)

    if not title:
        if strict:
            raise ArticleError("title", "a title is required")
        title = cut_summary(described.lead or body.lead, 80) or url
    if len(title) > MAX_TITLE:
        if strict:
            raise ArticleError("title", f"longer than {MAX_TITLE} characters")
        title = cut_summary(title, MAX_TITLE - 20)

    author = html_to_text((raw.author or "")[:MAX_FIELD_MARKUP]) or None
    if author and len(author) > MAX_AUTHOR:
        if strict:
            raise ArticleError("author", f"longer than {MAX_AUTHOR} characters")
        author = author[:MAX_AUTHOR].rsplit(" ", 1)[0]

    image = None
    if raw.image_url:
        image = _safe_url(raw.image_url, url, {"http", "https"})
        if image is None and strict:
            raise ArticleError("image_url", "must be an http(s) link")
        if image and len(image) > MAX_URL:
            if strict:
                raise ArticleError("image_url", f"longer than {MAX_URL} characters")
            image = None
    elif body.image:  # none named: the body's own first image (never a tracking pixel)
        image = _safe_url(body.image, base_url or url, {"http", "https"})
        image = image if image and len(image) <= MAX_URL else None

    published = utc(raw.published_at) if raw.published_at else now
    date_given = raw.published_at is not None and published <= now
    published = min(published, now)

    topics = clean_topics(raw.topics)
    if strict and len([t for t in raw.topics if t and t.strip()]) > MAX_TOPICS:
        raise ArticleError("topics", f"at most {MAX_TOPICS} topics")

    return CleanArticle(
        guid=guid,
        url=url,
        title=title,
        summary=summary,
        content_html=content,
        image_url=image,
        author=author,
        published_at=published,
        topics=topics,
        date_given=date_given,
        raw_summary=(raw.summary_html or "")[:MAX_CONTENT] or None,
        raw_content=(raw.content_html or "")[:MAX_CONTENT] or None,
    )
