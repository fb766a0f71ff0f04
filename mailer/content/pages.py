"""Import one article page: metadata first, page text only where metadata is silent.

Publishers describe their own articles in Open Graph tags and JSON-LD far
more reliably than any reading of the page's layout, so title, lead, image,
date, canonical link and section come from there in that order, with
<title> and <h1> as fallbacks. The body is the article's main container,
handed to `incoming.normalise` as the page sent it: there the one article
cleaner (`mailer.content.cleaner`) cuts out the page furniture (search boxes, share
buttons, "Also read" boxes, newsletter sign-ups, adverts) as it does for
feeds and the API, finds the lead when the page gives no description, and
the result is sanitised like any other outside HTML.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import lxml.html
from lxml import etree
from sqlalchemy.orm import Session

from mailer import jsondata
from mailer.config import Settings
from mailer.content.articles import Outcome, TopicBudget, page_source, upsert_article
from mailer.content.incoming import ArticleError, RawArticle, html_to_text, normalise
from mailer.models import Article, Newsletter
from mailer.outbound import fetch

ARTICLE_TYPES = {
    "article",
    "newsarticle",
    "blogposting",
    "reportagenewsarticle",
    "analysisnewsarticle",
    "opinionnewsarticle",
    "report",
    "webpage",
}
MAIN_SELECTORS = (
    "//*[@itemprop='articleBody']",
    "//article",
    "//*[contains(concat(' ', normalize-space(@class), ' '), ' entry-content ')]",
    "//*[contains(concat(' ', normalize-space(@class), ' '), ' post-content ')]",
    "//*[contains(concat(' ', normalize-space(@class), ' '), ' article-body ')]",
    "//main",
    "//*[@role='main']",
)


def _meta(doc: Any, *names: str) -> list[str]:
    """Contents of <meta property|name|itemprop=…> for each name, in the order given."""
    found: list[str] = []
    for name in names:
        for el in doc.iter("meta"):
            key = (el.get("property") or el.get("name") or el.get("itemprop") or "").lower()
            value = (el.get("content") or "").strip()
            if key == name and value:
                found.append(value)
    return found


def _first(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _walk_ld(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _walk_ld(item)
    elif isinstance(node, dict):
        yield node
        if "@graph" in node:
            yield from _walk_ld(node["@graph"])


def json_ld_article(doc: Any) -> dict[str, Any]:
    """The page's JSON-LD Article (or NewsArticle, BlogPosting…), or {} if none parses."""
    for script in doc.xpath("//script[@type='application/ld+json']"):
        try:
            data = jsondata.loads(script.text or "")
        except ValueError:
            continue
        for node in _walk_ld(data):
            kinds = node.get("@type", [])
            kinds = kinds if isinstance(kinds, list) else [kinds]
            if any(str(k).lower() in ARTICLE_TYPES - {"webpage"} for k in kinds):
                return node
    return {}


def _ld_text(value: Any, key: str = "name") -> str | None:
    """A JSON-LD value that may be a string, an object with `key`, or a list of either."""
    if isinstance(value, list):
        for item in value:
            text = _ld_text(item, key)
            if text:
                return text
        return None
    if isinstance(value, dict):
        inner = value.get(key) or value.get("url") or value.get("@id")
        return inner.strip() if isinstance(inner, str) and inner.strip() else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_date(value: str | None) -> datetime | None:
    """ISO 8601 or RFC 2822; a date without a zone is taken as UTC."""
    if not value:
        return None
    value = value.strip()
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _main_container(doc: Any) -> Any:
    """The element holding the article's text: a marked-up body, else the densest block."""
    for selector in MAIN_SELECTORS:
        for el in doc.xpath(selector):
            if len(el.xpath(".//p")) >= 1:
                return el
    best, best_len = None, 0
    for el in doc.xpath("//body//*[p]"):
        length = sum(len(p.text_content()) for p in el.findall("p"))
        if length > best_len:
            best, best_len = el, length
    body = doc.find("body")
    return best if best is not None else (body if body is not None else doc)


_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")


def _decode(data: bytes | str) -> bytes | str:
    """Text for lxml: UTF-8 when the bytes are valid UTF-8 (most pages, declared or not),
    else the bytes as they are, for lxml to decode by the page's own <meta charset>."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    return _XML_DECL.sub("", data)


def extract(data: bytes | str, page_url: str | None = None) -> RawArticle:
    """The article a page describes, as raw (still untrusted) input for `normalise`."""
    if not data.strip():
        raise ArticleError("page", "the page is empty")
    try:
        doc = lxml.html.document_fromstring(_decode(data))
    except (etree.ParserError, ValueError) as exc:
        raise ArticleError("page", f"not an HTML page: {exc}") from exc
    ld = json_ld_article(doc)

    canonical_links = doc.xpath("//link[@rel='canonical']/@href")
    url = _first(
        canonical_links,
        _meta(doc, "og:url"),
        _ld_text(ld.get("mainEntityOfPage"), "@id"),
        ld.get("url"),
        page_url,
    )
    base = page_url or url
    if url and base:
        url = urljoin(base, url)

    h1 = [" ".join(h.text_content().split()) for h in doc.iter("h1")]
    title = _first(
        _meta(doc, "og:title", "twitter:title"),
        _ld_text(ld.get("headline")),
        _ld_text(ld.get("name")),
        h1,
        _page_title(doc, _first(_meta(doc, "og:site_name"))),
    )

    container = _main_container(doc)
    lead = _first(
        _meta(doc, "og:description", "description", "twitter:description"),
        _ld_text(ld.get("description")),
    )

    image = _first(
        _meta(doc, "og:image:secure_url", "og:image", "og:image:url", "twitter:image"),
        _ld_text(ld.get("image"), "url"),
        doc.xpath("//link[@rel='image_src']/@href"),
    )

    published = parse_date(
        _first(
            _meta(
                doc,
                "article:published_time",
                "datepublished",
                "date",
                "pubdate",
                "publishdate",
                "dc.date.issued",
                "parsely-pub-date",
            ),
            _ld_text(ld.get("datePublished")),
            doc.xpath("//*[@itemprop='datePublished']/@datetime"),
            container.xpath(".//time/@datetime"),
            doc.xpath("//time/@datetime"),
            _ld_text(ld.get("dateModified")),
            _meta(doc, "article:modified_time"),
        )
    )

    author = _first(
        _ld_text(ld.get("author")),
        [a for a in _meta(doc, "author", "article:author") if "://" not in a],
    )
    topics: list[str] = [*_meta(doc, "article:section"), *_meta(doc, "article:tag")]
    section = ld.get("articleSection")
    topics += section if isinstance(section, list) else [section] if section else []

    # The container as the page has it; normalise cleans it and takes the lead and the
    # image (when the metadata names none) from what the cleaner keeps.
    content = lxml.html.tostring(container, encoding="unicode", method="html", with_tail=False)
    return RawArticle(
        url=url,
        title=title,
        summary_html=lead,
        content_html=content,
        image_url=image,
        author=author,
        published_at=published,
        topics=[str(t) for t in topics if isinstance(t, str)],
    )


def _page_title(doc: Any, site_name: str | None) -> str | None:
    """<title> without the " | Site name" the site adds to every page."""
    el = doc.find(".//title")
    if el is None or not (el.text_content() or "").strip():
        return None
    text = " ".join(el.text_content().split())
    parts = re.split(r"\s+[|–—-]\s+", text)
    is_site = bool(site_name) and parts[-1].casefold() == (site_name or "").casefold()
    if len(parts) > 1 and (is_site or len(parts[-1]) < len(parts[0])):
        parts = parts[:-1]
    return " - ".join(parts)


def import_page(
    session: Session,
    newsletter: Newsletter,
    data: bytes | str,
    settings: Settings,
    *,
    page_url: str | None = None,
    topics: list[str] | None = None,
    budget: TopicBudget | None = None,
) -> tuple[Article, Outcome]:
    """Store the page's article under the newsletter; importing it again updates it.
    The page's own tags make topics within `budget` (the settings' cap by default)."""
    raw = extract(data, page_url)
    if not raw.url:
        raise ArticleError("url", "the page names no canonical URL: give the page's URL (--url)")
    clean = normalise(raw, base_url=page_url or raw.url, summary_length=settings.summary_length)
    if not html_to_text(clean.content_html) and not clean.summary:
        raise ArticleError("page", "found no article text on the page")
    return upsert_article(
        session,
        newsletter,
        page_source(newsletter),
        clean,
        extra_topics=topics or [],
        budget=budget or TopicBudget.from_settings(settings),
    )


def fetch_page(url: str, settings: Settings) -> tuple[bytes, str]:
    """The page's bytes and final URL, under the same timeout and size cap as feeds."""
    result = fetch(url, settings, accept="text/html, application/xhtml+xml;q=0.9, */*;q=0.5")
    if result.status != "ok":
        raise ArticleError("url", f"could not fetch {url}: {result.error or result.status}")
    return result.body, result.url
