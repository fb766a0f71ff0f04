"""`mailer feed add|list|poll`, `mailer article import|list|show`, `mailer topic list|rename`."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import click
from rich.table import Table
from sqlalchemy import select

from mailer import feeds, operators, pages
from mailer.articles import rename_topic
from mailer.cli.base import console, domain_session, settings_or_exit
from mailer.db import get_engine
from mailer.migrate import NotMigrated, require_current
from mailer.models import Article, Feed, Newsletter, Topic
from mailer.subscriptions import get_newsletter


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if hasattr(value, "strftime") else ""


# -- feeds ---------------------------------------------------------------------------


@click.group()
def feed() -> None:
    """RSS and Atom feeds that fill a newsletter."""


@feed.command("add")
@click.argument("newsletter")
@click.argument("url")
@click.option("--topic", "topics", multiple=True, help="Topic for every article; repeatable.")
@click.option(
    "--interval", type=int, default=None, help="Seconds between polls [MAILER_FEED_POLL_INTERVAL]."
)
def feed_add(newsletter: str, url: str, topics: tuple[str, ...], interval: int | None) -> None:
    """Add a feed to NEWSLETTER; the worker polls it from the next tick on."""
    settings = settings_or_exit()
    with domain_session() as session:
        nl = get_newsletter(session, newsletter)
        added = feeds.add_feed(
            session, nl, url, topics=list(topics), interval=interval, settings=settings
        )
        console.print(
            f"added feed {added.id} to [bold]{nl.slug}[/bold]: {added.url} "
            f"(every {added.interval} s"
            + (f"; topics {', '.join(added.topics)})" if added.topics else ")")
        )


@feed.command("list")
@click.argument("newsletter", required=False)
def feed_list(newsletter: str | None) -> None:
    """List feeds with their last poll, next poll and last error."""
    with domain_session() as session:
        query = select(Feed, Newsletter.slug).join(Newsletter).order_by(Newsletter.slug, Feed.id)
        if newsletter:
            query = query.where(Feed.newsletter_id == get_newsletter(session, newsletter).id)
        table = Table("id", "newsletter", "url", "title", "every", "last ok", "next", "errors")
        for f, slug in session.execute(query).all():
            table.add_row(
                str(f.id),
                slug,
                f.url,
                f.title or "",
                f"{f.interval}s",
                _when(f.last_success_at),
                _when(f.next_poll_at) or "now",
                f"{f.error_count}: {f.last_error}" if f.error_count else "",
            )
        console.print(table)


@feed.command("poll")
@click.option("--all", "every_feed", is_flag=True, help="Every feed, due or not.")
def feed_poll(every_feed: bool) -> None:
    """Poll the feeds that are due now (or all) and say what each gave."""
    settings = settings_or_exit()
    try:
        require_current(get_engine(settings.database))
    except NotMigrated as exc:
        raise click.ClickException(str(exc)) from exc
    reports = feeds.poll_due(settings, every_feed=every_feed)
    if not reports:
        console.print("no feed is due" + ("" if every_feed else "; use --all to poll them anyway"))
    for report in reports:
        console.print(f"feed {report.feed_id} {report.url}: {report.describe()}", highlight=False)
    failed = [r for r in reports if r.status in ("error", "missing")]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(reports)} feeds failed")


# -- articles --------------------------------------------------------------------------


@click.group()
def article() -> None:
    """Articles: import a page, list what a newsletter has, show one as stored and as sent."""


@article.command("import")
@click.argument("source")
@click.option("--newsletter", "-n", default=None, help="Slug; optional when there is only one.")
@click.option("--url", "page_url", default=None, help="The page's URL, for a FILE without one.")
@click.option("--topic", "topics", multiple=True, help="Extra topic; repeatable.")
def article_import(
    source: str, newsletter: str | None, page_url: str | None, topics: tuple[str, ...]
) -> None:
    """Import one article page from a URL or an HTML FILE."""
    settings = settings_or_exit()
    if source.startswith(("http://", "https://")):
        try:
            data, page_url = pages.fetch_page(source, settings)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    else:
        path = Path(source)
        if not path.is_file():
            raise click.ClickException(f"{source} is neither an http(s) URL nor a readable file")
        data = path.read_bytes()
    with domain_session() as session:
        if newsletter:
            nl = get_newsletter(session, newsletter)
        else:
            found = session.scalars(select(Newsletter).limit(2)).all()
            if len(found) != 1:
                raise click.ClickException("say which newsletter with --newsletter SLUG")
            nl = found[0]
        stored, outcome = pages.import_page(
            session, nl, data, settings, page_url=page_url, topics=list(topics)
        )
        console.print(
            f"{outcome.value} article {stored.id} in [bold]{nl.slug}[/bold]: {stored.title}\n"
            f"  {stored.url}\n  published {_when(stored.published_at)} UTC"
            + (f"; topics {', '.join(t.name for t in stored.topics)}" if stored.topics else ""),
            highlight=False,
        )


@article.command("list")
@click.argument("newsletter")
@click.option("--limit", type=int, default=20, show_default=True)
def article_list(newsletter: str, limit: int) -> None:
    """The newsletter's newest articles."""
    with domain_session() as session:
        nl = get_newsletter(session, newsletter)
        rows = session.scalars(
            select(Article)
            .where(Article.newsletter_id == nl.id)
            .order_by(Article.published_at.desc(), Article.id.desc())
            .limit(limit)
        ).all()
        table = Table("id", "published (UTC)", "title", "source", "topics")
        for a in rows:
            table.add_row(
                str(a.id),
                _when(a.published_at),
                a.title,
                a.source,
                ", ".join(t.name for t in a.topics),
            )
        console.print(table)


# Bidirectional overrides reorder what a terminal shows; C0/C1 controls (ESC…) drive it.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _printable(text: str) -> str:
    """Outside text made safe for a terminal: no escape sequences, no reordering."""
    return "".join(
        ch for ch in text if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _BIDI)
    )


@article.command("show")
@click.argument("article_id", type=int)
@click.option("--raw", is_flag=True, help="Also what the source sent, and what was removed.")
def article_show(article_id: int, raw: bool) -> None:
    """Show stored article ARTICLE_ID: its summary as readers get it and, with --raw, what
    its source sent and what the cleaner removed from it."""
    with domain_session() as session:
        a = operators.show_article(session, article_id, raw=raw)
    lines = [
        f"article {a.id} in {a.newsletter} ({a.source}): {a.title}",
        f"  {a.url}",
        f"  published {_when(a.published_at)} UTC, stored {_when(a.fetched_at)} UTC"
        + (f"; topics {', '.join(a.topics)}" if a.topics else ""),
        "summary:",
        f"  {a.summary or '(none)'}",
        f"body: {len(a.content_html):,} characters of HTML",
    ]
    if raw and not a.raw_kept:
        lines.append("what the source sent was not kept: stored before mailer kept it")
    elif raw:
        lines += ["sent as summary:", a.raw_summary or "(nothing)"]
        if a.raw_content != a.raw_summary:
            lines += ["sent as body:", a.raw_content or "(nothing)"]
        lines.append("removed by the cleaner:")
        lines += [f"  - {line}" for line in a.removed or ["(nothing)"]]
    console.print(_printable("\n".join(lines)), markup=False, highlight=False, soft_wrap=True)


# -- topics ------------------------------------------------------------------------------


@click.group()
def topic() -> None:
    """A newsletter's topics: created from feed categories, renamed by you."""


@topic.command("list")
@click.argument("newsletter")
def topic_list(newsletter: str) -> None:
    """Topics of NEWSLETTER: slug (stable, used in links) and name (shown to readers)."""
    with domain_session() as session:
        nl = get_newsletter(session, newsletter)
        table = Table("slug", "name")
        for t in session.scalars(
            select(Topic).where(Topic.newsletter_id == nl.id).order_by(Topic.name)
        ):
            table.add_row(t.slug, t.name)
        console.print(table)


@topic.command("rename")
@click.argument("newsletter")
@click.argument("slug")
@click.argument("new_name")
def topic_rename(newsletter: str, slug: str, new_name: str) -> None:
    """Show topic SLUG as NEW_NAME; the slug stays, so readers' choices keep working."""
    with domain_session() as session:
        renamed = rename_topic(session, get_newsletter(session, newsletter), slug, new_name)
        console.print(f"topic {renamed.slug} is now called {renamed.name!r}", highlight=False)
