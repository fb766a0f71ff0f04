"""The seed article: a real news page's text, one paragraph a line, with its furniture.

It came from /work/shared/seeds/ (a Ukrainian-war story on an African news
site): a search box, the headline again, a category, the text with two
"Also read" lines, then share, magazine, advertising and newsletter boxes.
Every path an article can take (feed, API, page) is tested with it, so the
rules that clean it are the same whichever way it comes.
"""

from __future__ import annotations

import html
from datetime import datetime
from email.utils import format_datetime

from tests.fixtures.feedserver import FIXTURES

SEED_TEXT = (FIXTURES / "pages" / "seed_article.txt").read_text(encoding="utf-8")
SEED_TITLE = (
    "Tensions rise as US approves Ukrainian strikes inside Russia with America-supplied weapons"
)
SEED_LEAD = (
    "Just hours after Ukraine’s military chief warned of a significant build-up of Russian "
    "troops along the Kharkiv border, reports have emerged that the U.S. has granted Ukraine "
    "limited permission to use American-supplied weapons to strike military targets inside "
    "Russia."
)
# What the issue names as never to reach a reader, whichever way the article came.
SEED_FURNITURE = (
    "Close this search box",
    "Also Read",
    "Share this article",
    "Advertisement",
    "Subscribe To Our Newsletter",
    "Receive the latest news",
)


def seed_html() -> str:
    """The seed text with each line wrapped in <p>, as the issue asks."""
    return "\n".join(f"<p>{html.escape(line, quote=False)}</p>" for line in SEED_TEXT.splitlines())


def seed_page(url: str, published: datetime) -> bytes:
    """The seed as a page: its headline as the <title>, its lines as the body."""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(SEED_TITLE)}</title>"
        f"<meta property='article:published_time' content='{published.isoformat()}'>"
        f"<link rel='canonical' href='{html.escape(url)}'></head>"
        f"<body>{seed_html()}</body></html>"
    ).encode()


def seed_feed(link: str, published: datetime) -> bytes:
    """An RSS feed with one item: the seed as its content:encoded, no description."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        "<channel><title>The Africa Report Weekly</title><link>https://news.example.org/</link>"
        f"<item><title>{html.escape(SEED_TITLE)}</title><link>{html.escape(link)}</link>"
        f"<guid>{html.escape(link)}</guid><pubDate>{format_datetime(published)}</pubDate>"
        f"<content:encoded><![CDATA[{seed_html()}]]></content:encoded></item>"
        "</channel></rss>"
    ).encode()
