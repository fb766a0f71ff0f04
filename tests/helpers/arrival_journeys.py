"""One running system for the editions-by-arrival journeys, on either backend.

A real `mailer up` (web, worker, beat in their own processes) reached over
HTTP and through its CLI: the embedded default (SQLite, kombu's SQLAlchemy
broker, the built-in aiosmtpd sink and its outbox), or PostgreSQL, Redis and
an aiosmtpd server of the test's own. Feeds and pages come from a real HTTP
server. The journeys are played once per system, in two minutes (an edition
is named by its minute), and the tests read what each reader got.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import httpx

from mailer.mail.sink import Outbox
from tests.fixtures.feedserver import FeedServer
from tests.helpers.time import after_this_minute
from tests.helpers.up import Up
from tests.smtp import SMTPServer

TOKEN = "journeys-api-token-0123456789"
LATE_READERS = ("ann@example.org", "bob@example.org")
PAGE_READER = "pat@example.org"
FEED_READER = "fay@example.org"


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return "" if part is None else str(part.get_content())


@dataclass
class Journeys:
    """What the system did: every CLI answer kept, and where each reader's mail is."""

    up: Up
    mails: Callable[[str], list[EmailMessage]]
    said: dict[str, str] = field(default_factory=dict)

    def run(self, name: str, *args: str) -> str:
        done = self.up.mailer(*args)
        assert done.returncode == 0, f"mailer {' '.join(args)}: {done.stdout}{done.stderr}"
        self.said[name] = done.stdout + done.stderr
        return self.said[name]

    def digests_to(self, address: str, newsletter_name: str) -> list[str]:
        """The text of each digest the reader got from that newsletter, oldest first."""
        found = [
            m for m in self.mails(address) if str(m["Subject"]).startswith(f"{newsletter_name}:")
        ]
        found.sort(key=lambda m: str(m["Date"]))
        return [text_of(m) for m in found]


def outbox_mails(data_dir: Path) -> Callable[[str], list[EmailMessage]]:
    def mails(address: str) -> list[EmailMessage]:
        return [i.message for i in Outbox(data_dir / "outbox").items(1000) if address in i.to]

    return mails


def smtp_mails(server: SMTPServer) -> Callable[[str], list[EmailMessage]]:
    def mails(address: str) -> list[EmailMessage]:
        return [r.message for r in server.to(address)]

    return mails


def rss(items: list[tuple[str, str, datetime]]) -> bytes:
    entries = "".join(
        f"<item><title>{html.escape(title)}</title><link>{html.escape(url)}</link>"
        f"<guid>{html.escape(url)}</guid><pubDate>{format_datetime(when)}</pubDate>"
        f"<description>{html.escape(title)}, in short.</description></item>"
        for title, url, when in items
    )
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Catalogue</title>'
        f"<link>https://shop.example.org/</link>{entries}</channel></rss>"
    ).encode()


def back_catalogue(now: datetime) -> list[tuple[str, str, datetime]]:
    """Three years of monthly items, and two from this week."""
    items = [
        (f"Archive {n}", f"https://shop.example.org/archive/{n}", now - timedelta(days=30 * n))
        for n in range(2, 37)
    ]
    items += [
        ("This week: Tuesday", "https://shop.example.org/week/tue", now - timedelta(days=1)),
        ("This week: Sunday", "https://shop.example.org/week/sun", now - timedelta(days=3)),
    ]
    return items


def old_page(url: str, published: datetime) -> bytes:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>A page from last year</title>"
        f"<meta property='article:published_time' content='{published.isoformat()}'>"
        f"<link rel='canonical' href='{url}'></head><body><article>"
        "<p>What we wrote a year ago still matters, and here is why it does.</p>"
        "</article></body></html>"
    ).encode()


def push(base_url: str, title: str, url: str, published: datetime) -> None:
    answer = httpx.post(
        f"{base_url}/api/articles",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "newsletter": "late",
            "url": url,
            "title": title,
            "published_at": published.isoformat(),
        },
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text


def play(journeys: Journeys, feeds: FeedServer, workdir: Path) -> None:
    """Both minutes of every journey; each step as a user would take it."""
    run, up = journeys.run, journeys.up
    for slug, name in (("late", "Late"), ("pages", "Pages"), ("feeds", "Feeds")):
        run(f"create {slug}", "newsletter", "create", slug, "--name", name,
            "--from", f"{name} <{slug}@example.org>")  # fmt: skip
    for slug, readers in (("late", LATE_READERS), ("pages", (PAGE_READER,)),
                          ("feeds", (FEED_READER,))):  # fmt: skip
        csv = workdir / f"{slug}.csv"
        csv.write_text("email,frequency\n" + "".join(f"{r},daily\n" for r in readers))
        run(f"import {slug}", "subscribers", "import", str(csv), "--newsletter", slug,
            "--confirmed")  # fmt: skip

    now = datetime.now(UTC)
    # A new feed with three years behind it: its first poll comes just before the cut.
    catalogue = back_catalogue(now)
    feed_url = feeds.serve("/catalogue.xml", rss(catalogue), content_type="application/rss+xml")
    run("feed add", "feed", "add", "feeds", feed_url, "--interval", "3600")

    # An old page imported by hand: the preview shows it, the edition carries it.
    page_url = feeds.serve(
        "/last-year.html", old_page(feeds.url("/last-year.html"), now - timedelta(days=365)),
        content_type="text/html",
    )  # fmt: skip
    run("import page", "article", "import", page_url, "--newsletter", "pages")
    run("preview pages", "digest", "preview", "pages")

    push(up.base_url, "Morning briefing", "https://news.example.org/morning", now)
    for slug in ("late", "pages", "feeds"):
        run(f"send {slug} 1", "digest", "send", slug, "--frequency", "daily", "--wait")
    cut = datetime.now(UTC).replace(second=0, microsecond=0)

    # After the edition went out: an article dated 30 minutes before its cut, pushed
    # as a CMS that dates its drafts would; a feed item published before the cut that
    # the feed only shows now, polled after the cut.
    push(up.base_url, "Late but true", "https://news.example.org/late", cut - timedelta(minutes=30))
    before = ("Before the cut", "https://shop.example.org/week/cut", cut - timedelta(minutes=5))
    catalogue.append(before)
    feeds.serve("/catalogue.xml", rss(catalogue), content_type="application/rss+xml")
    run("feed poll", "feed", "poll", "--all")

    after_this_minute()
    for slug in ("late", "feeds"):
        run(f"send {slug} 2", "digest", "send", slug, "--frequency", "daily", "--wait")
