"""Every listing reads well anywhere: `--json` is the API's document, and the tables
stay whole at 80 columns (a pipe's width) instead of squashing values into `wi…`."""

from __future__ import annotations

import io
import json
import os
import subprocess

import pytest
from rich.text import Text

from mailer.cli.base import TextConsole
from mailer.content import feeds
from mailer.content.articles import upsert_article
from mailer.content.incoming import RawArticle, normalise
from mailer.models import Delivery, DeliveryStatus, Frequency
from mailer.operators import editions as editions_ops
from mailer.operators import schedules as schedules_ops
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from tests.conftest import API_TOKEN as TOKEN
from tests.helpers.cli import run, run_json
from tests.helpers.processes import mailer_argv

LONG_URL = "https://a-rather-long-host-name.news.example.org/sections/science/feeds/all.atom.xml"
TITLE = "Science [/] desk"  # rich markup in outside text must print as itself


@pytest.fixture
def newsroom(settings, session):
    """A newsletter with topics, a feed, a schedule, readers and an edition in mid-send
    with a delivery in every state: each listing has something in every column."""
    nl = newsletters.create_newsletter(
        session, "weekly", "Weekly Notes", "Weekly <news@example.org>"
    )
    for name in ("Science", "Culture"):
        newsletters.ensure_topic(session, nl, name)
    feed = feeds.add_feed(session, nl, LONG_URL, topics=["Science"])
    feed.title = TITLE
    feed.error_count, feed.last_error = 2, "HTTP 503 Service Unavailable"
    schedules_ops.set_schedule(session, "weekly", Frequency.WEEKLY, "0 8 * * MON", "Europe/Kyiv")
    ids = []
    for i, state in enumerate(DeliveryStatus):
        out = subs.subscribe(
            session,
            email=f"reader{i}@example.org",
            newsletter="weekly",
            topics=["science"],
            confirmed=True,
            source="test",
        )
        ids.append((out.subscription_id, state))
    story = RawArticle(
        url="https://news.example.org/2026/12/07/a-long-story-about-science-and-culture",
        title="A long story about science, culture and everything that lies between",
        topics=["Science", "Culture"],
    )
    upsert_article(session, nl, "api:1", normalise(story, base_url=None))
    edition, _ = editions_ops.send_now(session, "weekly")
    edition.status = "sending"
    for sub_id, state in ids:
        session.add(Delivery(digest_id=edition.id, subscription_id=sub_id, status=state))
    session.commit()
    return edition.id


LISTINGS = [
    (("newsletter", "list"), "/api/newsletters"),
    (("topic", "list", "weekly"), "/api/newsletters/weekly/topics"),
    (("feed", "list", "weekly"), "/api/newsletters/weekly/feeds"),
    (("schedule", "list", "weekly"), "/api/newsletters/weekly/schedules"),
    (("stats",), "/api/stats"),
    (("stats", "weekly"), "/api/newsletters/weekly/stats"),
    (("digest", "status", "{edition}"), "/api/editions/{edition}"),
    (("article", "list", "weekly"), "/api/newsletters/weekly/articles"),
]


@pytest.mark.parametrize(("args", "path"), LISTINGS, ids=[" ".join(a) for a, _ in LISTINGS])
def test_json_output_is_the_operator_apis_document(api, newsroom, args, path):
    cli = run_json(*(a.format(edition=newsroom) for a in args))
    answer = api.get(path.format(edition=newsroom), headers=TOKEN)
    assert answer.status_code == 200, answer.text
    assert cli == answer.json()


def test_listings_of_pages_print_the_apis_items_as_one_array(api, newsroom):
    editions = api.get("/api/newsletters/weekly/editions", headers=TOKEN).json()
    assert run_json("digest", "status") == editions["items"]
    readers = api.get("/api/subscribers", params={"limit": 3}, headers=TOKEN).json()
    paged = run("subscribers", "list", "--limit", "3", "--json")
    assert json.loads(paged.stdout) == readers["items"]
    assert f"--cursor {readers['next_cursor']}" in paged.stderr  # the next page, off stdout


def fits(output: str, width: int = 80, except_for: tuple[str, ...] = ()) -> None:
    """No line wider than the console unless it holds a value longer than the console
    (a URL stays whole, for copying); nothing cut short with an ellipsis."""
    assert "…" not in output, output
    for line in output.splitlines():
        if not any(value in line for value in except_for):
            assert len(line) <= width, f"{len(line)} columns:\n{line}\n\n{output}"


@pytest.mark.parametrize("args", [a for a, _ in LISTINGS] + [("digest", "status")])
def test_every_listing_reads_whole_in_80_columns(newsroom, args):
    result = run(*(a.format(edition=newsroom) for a in args), width=80)
    assert result.exit_code == 0, result.output
    fits(result.output, except_for=(LONG_URL,))


def test_digest_status_at_80_columns_shows_every_count_and_the_full_window(newsroom):
    output = run("digest", "status", width=80).output
    fits(output)
    for state in DeliveryStatus:
        assert f"1 {state.value}" in output, output
    assert "sending" in output and "weekly" in output
    one = run("digest", "status", str(newsroom), width=80).output
    fits(one)
    assert "→" in one and "1 cancelled" in one


def test_feed_list_at_80_columns_keeps_the_url_and_the_title_as_written(newsroom):
    output = run("feed", "list", width=80).output
    fits(output, except_for=(LONG_URL,))
    assert LONG_URL in output and TITLE in output
    assert "2: HTTP 503 Service Unavailable" in output


def test_digest_status_in_a_pipe_is_readable(settings, newsroom):
    """The reported case: `mailer digest status | cat`, no terminal, no COLUMNS."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run(
        mailer_argv("digest", "status"), env=env, capture_output=True, text=True, timeout=120
    )
    assert piped.returncode == 0, piped.stderr
    fits(piped.stdout)
    assert "\x1b[" not in piped.stdout  # no colour codes in a pipe
    assert "1 sent" in piped.stdout and "sending" in piped.stdout


def test_an_empty_listing_says_what_to_do_and_json_is_an_empty_array(settings):
    result = run("feed", "list", width=80)
    assert result.exit_code == 0 and "mailer feed add" in result.output
    assert run_json("feed", "list") == []
    assert run_json("newsletter", "list") == []


def test_bounces_poll_json_keeps_json_lines_on_stdout(settings, tmp_path, monkeypatch):
    from tests.conftest import configure

    maildir = tmp_path / "bounces"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    configure(monkeypatch, bounce_maildir=str(maildir))
    result = run("bounces", "poll", "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # no report: no line, and the summary is not in the stream
    assert "0 report(s)" in result.stderr


HOSTILE = "[link=https://evil.example]Read[/link] [bold]me[/] [/]"


def test_outside_text_is_printed_as_written_never_read_as_markup(settings, tmp_path):
    """rich would read `[/]` as a closing tag (a crash) and `[link=…]` as a terminal
    hyperlink; names, titles and replies are printed as they are."""
    made = run("newsletter", "create", "desk", "--name", f"Desk {HOSTILE}", "--from", "D <d@x.org>")
    assert made.exit_code == 0, made.output
    assert f"Desk {HOSTILE}" in made.output
    page = tmp_path / "page.html"
    page.write_text(
        f"<html><head><title>{HOSTILE}</title></head><body><article><h1>{HOSTILE}</h1>"
        + "<p>A paragraph long enough to be the article's text. " * 5
        + "</p></article></body></html>"
    )
    imported = run("article", "import", str(page), "--url", "https://desk.example/a")
    assert imported.exit_code == 0, imported.output
    assert HOSTILE in imported.output
    assert HOSTILE in run("newsletter", "list", width=200).output


TERMINAL_ORDERS = "Evil \x1b[2J\x1b]0;pwned\x07 title \x9b31m \u202egnp.exe"


def test_outside_text_in_a_listing_never_drives_the_terminal(session, newsroom):
    """A feed's title, author and topic reach `article list` as stored: the words print,
    the escape sequences and the bidirectional override do not."""
    nl = newsletters.get_newsletter(session, "weekly")
    story = RawArticle(
        url="https://news.example.org/evil", title=TERMINAL_ORDERS, topics=["t\x1bx"]
    )
    upsert_article(session, nl, "api:1", normalise(story, base_url=None))
    session.commit()
    for args in (("article", "list", "weekly"), ("topic", "list", "weekly")):
        output = run(*args, width=200).output
        for control in ("\x1b", "\x07", "\x9b", "\u202e"):
            assert control not in output, (args, output)
    assert "Evil" in run("article", "list", "weekly", width=200).output


def test_the_consoles_own_colours_still_reach_a_terminal() -> None:
    """Only text is filtered: what rich itself sends a terminal (styles) still goes."""
    out = io.StringIO()
    TextConsole(file=out, force_terminal=True, color_system="standard", markup=False).print(
        Text(TERMINAL_ORDERS, style="bold")
    )
    printed = out.getvalue()
    assert "\x1b[1m" in printed and "Evil" in printed and "gnp.exe" in printed
    assert "\x1b[2J" not in printed and "\x1b]0;" not in printed and "\u202e" not in printed
