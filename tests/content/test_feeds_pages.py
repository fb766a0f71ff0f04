"""Page import by URL from a real local server, and the operator CLI for feeds, articles, topics."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailer.config import Settings
from mailer.db import session_scope
from mailer.models import Article, Feed, Topic
from mailer.readers.newsletters import create_newsletter
from tests.fixtures.feedserver import FIXTURES, FeedServer, fixture
from tests.helpers.cli import run

# The test servers are on 127.0.0.1: these fetches are allowed to go there.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private_fetch")]


@pytest.fixture
def newsletter(settings: Settings) -> str:
    with session_scope(settings.database) as session:
        create_newsletter(session, "news", "News", "News <news@example.com>")
    return "news"


def count(settings: Settings, model: type) -> int:
    with session_scope(settings.database) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_article_import_by_url_reads_the_page_metadata(
    settings: Settings, newsletter: str, server: FeedServer
) -> None:
    url = server.serve(
        "/story", fixture("pages/news_article.html"), content_type="text/html; charset=utf-8"
    )
    result = run("article", "import", url)
    assert result.exit_code == 0, result.output
    assert "created article" in result.output
    with session_scope(settings.database) as session:
        article = session.scalars(select(Article)).one()
        assert (
            article.url == "https://news.example.org/2024/05/31/tensions-rise-us-approves-strikes/"
        )
        assert article.published_at.isoformat() == "2024-05-31T06:15:00+00:00"
        assert article.source == "page:1"
        assert "Advertisement" not in article.content_html
        assert sorted(t.name for t in article.topics) == ["NATO", "Ukraine-Russia war"]
    again = run("article", "import", url)
    assert "unchanged article" in again.output
    assert count(settings, Article) == 1


def test_article_import_of_a_file_without_a_url_asks_for_one(
    settings: Settings, newsletter: str
) -> None:
    bare = str(FIXTURES / "pages" / "bare_article.html")
    result = run("article", "import", bare)
    assert result.exit_code != 0 and "--url" in result.output
    assert count(settings, Article) == 0
    result = run("article", "import", bare, "--url", "https://ledger.example.com/aid", "-n", "news")
    assert result.exit_code == 0, result.output
    assert count(settings, Article) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["article", "import", "/no/such/file.html"], "neither"),
        (
            ["article", "import", str(FIXTURES / "pages" / "news_article.html"), "-n", "nope"],
            "nope",
        ),
    ],
)
def test_article_import_errors_are_clear_and_store_nothing(
    settings: Settings, newsletter: str, args: list[str], message: str
) -> None:
    result = run(*args)
    assert result.exit_code != 0 and message in result.output
    assert count(settings, Article) == 0


def test_article_import_of_an_unreachable_url_fails_cleanly(
    settings: Settings, newsletter: str, server: FeedServer
) -> None:
    result = run("article", "import", server.serve("/gone", b"", status=404))
    assert result.exit_code != 0 and "404" in result.output
    assert count(settings, Article) == 0


def test_feed_add_list_and_poll_from_the_cli(
    settings: Settings, newsletter: str, server: FeedServer
) -> None:
    url = server.serve("/feed", fixture("feeds/rss_unicode.xml"))
    result = run("feed", "add", "news", url, "--topic", "World", "--interval", "600")
    assert result.exit_code == 0, result.output
    assert run("feed", "add", "news", url).exit_code != 0  # already there
    assert run("feed", "add", "news", "gopher://x").exit_code != 0
    assert run("feed", "add", "news", url + "?x", "--interval", "5").exit_code != 0
    assert count(settings, Feed) == 1
    polled = run("feed", "poll")
    assert polled.exit_code == 0 and "2 new" in polled.output
    assert "no feed is due" in run("feed", "poll").output
    assert "2 unchanged" in run("feed", "poll", "--all").output
    listing = run("feed", "list", "news")
    assert listing.exit_code == 0 and "Новости" in listing.output


def test_feed_poll_exits_non_zero_when_a_feed_fails(
    settings: Settings, newsletter: str, server: FeedServer
) -> None:
    run("feed", "add", "news", server.serve("/bad", b"nope", status=500))
    run("feed", "add", "news", server.serve("/good", fixture("feeds/atom.xml")))
    result = run("feed", "poll", "--all")
    assert result.exit_code != 0 and "1 of 2 feeds failed" in result.output
    assert "2 new" in result.output
    assert count(settings, Article) == 2


def test_topic_list_and_rename_from_the_cli(settings: Settings, newsletter: str) -> None:
    run("article", "import", str(FIXTURES / "pages" / "news_article.html"))
    listing = run("topic", "list", "news")
    assert "ukraine-russia-war" in listing.output and "NATO" in listing.output
    renamed = run("topic", "rename", "news", "nato", "North Atlantic alliance")
    assert renamed.exit_code == 0, renamed.output
    refused = run("topic", "rename", "news", "nato", "Ukraine-Russia war")
    assert refused.exit_code != 0 and "already" in refused.output
    with session_scope(settings.database) as session:
        names = session.scalars(select(Topic.name).order_by(Topic.name)).all()
    assert names == ["North Atlantic alliance", "Ukraine-Russia war"]
