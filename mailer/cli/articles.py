"""`mailer feed add|list|poll`, `mailer article import|list|show`, `mailer topic list|rename`."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.cli.base import console, domain_session, settings_or_exit
from mailer.cli.output import Column, json_option, print_json, show, when
from mailer.content import feeds, pages
from mailer.content.articles import TopicBudget
from mailer.db import get_engine
from mailer.migrate import NotMigrated, require_current
from mailer.operators import articles as articles_ops
from mailer.operators import feeds as feeds_ops
from mailer.operators import newsletters as newsletters_ops

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
@click.option(
    "--backfill-days",
    type=int,
    default=None,
    help="On the first poll, items published within N days go to readers; older ones are "
    "kept as history [MAILER_DIGEST_MAX_AGE].",
)
def feed_add(
    newsletter: str,
    url: str,
    topics: tuple[str, ...],
    interval: int | None,
    backfill_days: int | None,
) -> None:
    """Add a feed to NEWSLETTER; the worker polls it from the next tick on."""
    settings = settings_or_exit()
    with domain_session() as session:
        added = feeds_ops.add_feed(
            session,
            settings,
            newsletter,
            url,
            topics=topics,
            interval=interval,
            backfill_days=backfill_days,
        )
    console.print(f"added feed {added.id} to {added.newsletter}: " + _describe(added))


def _describe(f: feeds_ops.FeedOut) -> str:
    topics = f"; topics {', '.join(f.topics)}" if f.topics else ""
    return f"{f.url} (every {f.interval} s{topics})" + (" [paused]" if f.paused else "")


FEED_COLUMNS = (
    Column("id", lambda f: str(f.id)),
    Column("newsletter", lambda f: f.newsletter),
    Column("url", lambda f: f.url),
    Column("title", lambda f: f.title or ""),
    Column("every", lambda f: f"{f.interval}s"),
    Column("topics", lambda f: ", ".join(f.topics)),
    Column("last ok", lambda f: when(f.last_success_at)),
    Column("next", lambda f: "paused" if f.paused else when(f.next_poll_at, "now")),
    # A note on a poll that worked (the topic cap) shows too.
    Column(
        "errors",
        lambda f: f"{f.error_count}: {f.last_error}" if f.error_count else (f.last_error or ""),
    ),
)


@feed.command("list")
@click.argument("newsletter", required=False)
@json_option
def feed_list(newsletter: str | None, as_json: bool) -> None:
    """List feeds with their last poll, next poll and last error."""
    with domain_session() as session:
        rows = feeds_ops.list_feeds(session, newsletter)
    if as_json:
        print_json(rows)
        return
    show(rows, FEED_COLUMNS, empty="no feed yet: mailer feed add NEWSLETTER URL")


@feed.command("edit")
@click.argument("feed_id", type=int)
@click.option("--interval", type=int, default=None, help="Seconds between polls.")
@click.option("--topic", "topics", multiple=True, help="Replaces the feed's topics; repeatable.")
@click.option("--clear-topics", is_flag=True, help="The feed's articles get no topic of its own.")
def feed_edit(
    feed_id: int, interval: int | None, topics: tuple[str, ...], clear_topics: bool
) -> None:
    """Change a feed's interval or topics, from its next poll on."""
    if topics and clear_topics:
        raise click.UsageError("--topic and --clear-topics contradict each other")
    if interval is None and not topics and not clear_topics:
        raise click.UsageError("nothing to change: give --interval, --topic or --clear-topics")
    with domain_session() as session:
        out = feeds_ops.edit_feed(
            session,
            feed_id,
            interval=interval,
            topics=list(topics) if topics else ([] if clear_topics else None),
        )
    console.print(f"feed {out.id}: " + _describe(out), highlight=False)


@feed.command("pause")
@click.argument("feed_id", type=int)
def feed_pause(feed_id: int) -> None:
    """Stop polling a feed; it keeps its URL, topics and articles."""
    with domain_session() as session:
        out = feeds_ops.set_feed_paused(session, feed_id, True)
    console.print(f"feed {out.id} paused: {out.url}", highlight=False)


@feed.command("resume")
@click.argument("feed_id", type=int)
def feed_resume(feed_id: int) -> None:
    """Poll a paused feed again, from the next tick."""
    with domain_session() as session:
        out = feeds_ops.set_feed_paused(session, feed_id, False)
    console.print(f"feed {out.id} resumed: {out.url}", highlight=False)


@feed.command("remove")
@click.argument("feed_id", type=int)
def feed_remove(feed_id: int) -> None:
    """Delete a feed; the articles it brought stay."""
    with domain_session() as session:
        out = feeds_ops.remove_feed(session, feed_id)
    console.print(
        f"removed feed {out.id} from {out.newsletter}: {out.url} (its articles stay)",
        highlight=False,
    )


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
    """Articles: import, list, show, exclude, include.

    Import a page, list what a newsletter has, show one as stored and as sent."""


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
            nl = newsletters_ops.newsletter(session, newsletter)
        else:
            found = newsletters_ops.list_newsletters(session)
            if len(found) != 1:
                raise click.ClickException("say which newsletter with --newsletter SLUG")
            nl = found[0]
        budget = TopicBudget.from_settings(settings)
        stored, outcome = pages.import_page(
            session, nl, data, settings, page_url=page_url, topics=list(topics), budget=budget
        )
        console.print(
            f"{outcome.value} article {stored.id} in {nl.slug}: {stored.title}\n"
            f"  {stored.url}\n  published {when(stored.published_at)} UTC"
            + (f"; topics {', '.join(t.name for t in stored.topics)}" if stored.topics else ""),
            highlight=False,
        )
        if budget.refused:
            console.print(budget.describe(), style="yellow", highlight=False)


ARTICLE_COLUMNS = (
    Column("id", lambda a: str(a.id)),
    Column("published", lambda a: when(a.published_at)),
    Column("title", lambda a: a.title),
    Column("source", lambda a: a.source),
    Column("topics", lambda a: ", ".join(a.topics)),
    Column("arrived", lambda a: when(a.arrived_at)),
    Column("editions", lambda a: a.in_editions),
)


@article.command("list")
@click.argument("newsletter")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
def article_list(newsletter: str, limit: int, as_json: bool) -> None:
    """A newsletter's newest articles and what editions make of them.

    When each arrived and whether editions carry it."""
    with domain_session() as session:
        rows = articles_ops.list_articles(session, newsletter, limit)
    if as_json:
        print_json(rows)
        return
    show(rows, ARTICLE_COLUMNS, empty=f"{newsletter} has no articles yet")


@article.command("exclude")
@click.argument("article_id", type=int)
def article_exclude(article_id: int) -> None:
    """Keep article ARTICLE_ID out of the next editions (until `include`)."""
    with domain_session() as session:
        a = articles_ops.exclude_article(session, article_id)
    console.print(
        f"article {a.id} in {a.newsletter} is excluded from editions: {a.title}",
        markup=False,
        highlight=False,
    )


@article.command("include")
@click.argument("article_id", type=int)
def article_include(article_id: int) -> None:
    """Put an excluded article back in the next editions.

    They carry it to the readers who lack it."""
    with domain_session() as session:
        a = articles_ops.include_article(session, article_id)
    console.print(
        f"article {a.id} in {a.newsletter} goes in the next editions: {a.title}",
        markup=False,
        highlight=False,
    )


def _in_editions(a: articles_ops.ArticleOut) -> str:
    """`article list`'s last column (`ArticleOut.in_editions`), said in full."""
    if a.in_editions == "excluded":
        return f"kept out of editions since {when(a.excluded_at)} UTC (article include {a.id})"
    if a.in_editions == "history":
        return "history: older than the backfill window when it came, never mailed"
    return f"due to readers from {when(a.due_at)} UTC"


@article.command("show")
@click.argument("article_id", type=int)
@click.option("--raw", is_flag=True, help="Also what the source sent, and what was removed.")
def article_show(article_id: int, raw: bool) -> None:
    """Show stored article ARTICLE_ID as readers get it.

    With --raw, also what its source sent and what the cleaner removed from it."""
    with domain_session() as session:
        a = articles_ops.show_article(session, article_id, raw=raw)
    lines = [
        f"article {a.id} in {a.newsletter} ({a.source}): {a.title}",
        f"  {a.url}",
        f"  published {when(a.published_at)} UTC, stored {when(a.fetched_at)} UTC"
        + (f"; topics {', '.join(a.topics)}" if a.topics else ""),
        f"  arrived {when(a.arrived_at)} UTC; {_in_editions(a)}",
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
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


# -- topics ------------------------------------------------------------------------------


@click.group()
def topic() -> None:
    """A newsletter's topics: from feed categories, or yours."""


@topic.command("list")
@click.argument("newsletter")
@json_option
def topic_list(newsletter: str, as_json: bool) -> None:
    """Topics of NEWSLETTER: the slug and the name of each.

    The slug is stable and used in links; the name is what readers see."""
    with domain_session() as session:
        rows = [
            newsletters_ops.TopicOut.model_validate(t)
            for t in newsletters_ops.list_topics(session, newsletter)
        ]
    if as_json:
        print_json(rows)
        return
    show(
        rows,
        (Column("slug", lambda t: t.slug), Column("name", lambda t: t.name)),
        empty=f"{newsletter} has no topics yet (feeds and articles bring them)",
    )


@topic.command("rename")
@click.argument("newsletter")
@click.argument("slug")
@click.argument("new_name")
def topic_rename(newsletter: str, slug: str, new_name: str) -> None:
    """Show topic SLUG as NEW_NAME. The slug stays.

    Readers' choices and links keep working."""
    with domain_session() as session:
        renamed = newsletters_ops.rename_topic(session, newsletter, slug, new_name)
        console.print(f"topic {renamed.slug} is now called {renamed.name!r}", highlight=False)
