"""Editions by arrival, as a user meets them: over real HTTP, a real worker, real SMTP.

Played once per system (the embedded default; PostgreSQL + Redis with an
aiosmtpd server) by `tests/helpers/arrival_journeys.play`, in two minutes:
an edition goes out; an article dated 30 minutes before its cut is pushed
through `POST /api/articles`; a feed shows an item published before the cut
only after it; the next edition carries both. Beside them, an old page
imported by hand, and a new feed with three years of items.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailer.mail.sink import free_port
from tests.conftest import RUN_ID, truncate_all
from tests.fixtures.feedserver import FeedServer
from tests.helpers.arrival_journeys import (
    FEED_READER,
    LATE_READERS,
    PAGE_READER,
    TOKEN,
    Journeys,
    outbox_mails,
    play,
    smtp_mails,
)
from tests.helpers.up import running, start_up, without_settings
from tests.smtp import start_smtp_server


@pytest.fixture(scope="module", params=["embedded", "postgresql"])
def journeys(request, tmp_path_factory) -> Iterator[Journeys]:
    workdir = tmp_path_factory.mktemp(f"journeys-{request.param}")
    feeds = FeedServer()
    smtp = None
    common = {
        "data_dir": str(workdir / "data"),
        "api_token": TOKEN,
        "fetch_allow_private": "true",
        "log_level": "INFO",
    }
    if request.param == "embedded":
        env = without_settings(sink_port=str(free_port()), **common)
    else:
        database = request.getfixturevalue("pg_database")
        truncate_all(database)
        smtp = start_smtp_server()
        env = without_settings(
            database_url=database,
            broker_url=request.getfixturevalue("redis_url"),
            queue=f"journeys-{RUN_ID}",
            smtp_url=smtp.url,
            **common,
        )
    up = start_up(env, workdir, free_port(), workdir / "up.log", workdir / "data")
    try:
        with running(up):
            mails = outbox_mails(workdir / "data") if smtp is None else smtp_mails(smtp)
            story = Journeys(up, mails)
            play(story, feeds, workdir)
            yield story
    finally:
        feeds.stop()
        if smtp is not None:
            smtp.stop()


def test_an_article_dated_before_the_cut_and_pushed_after_it_reaches_every_reader_next(
    journeys: Journeys,
) -> None:
    for reader in LATE_READERS:
        first, second = journeys.digests_to(reader, "Late")
        assert "Morning briefing" in first and "Late but true" not in first
        assert "Late but true" in second and "Morning briefing" not in second


def test_an_old_page_imported_by_hand_shows_in_the_preview_and_goes_out(
    journeys: Journeys,
) -> None:
    assert "A page from last year" in journeys.said["preview pages"]
    (digest,) = journeys.digests_to(PAGE_READER, "Pages")
    assert "A page from last year" in digest


def test_a_new_feed_with_three_years_behind_it_sends_only_its_last_seven_days(
    journeys: Journeys,
) -> None:
    first = journeys.digests_to(FEED_READER, "Feeds")[0]
    assert "This week: Tuesday" in first and "This week: Sunday" in first
    assert "Archive" not in first


def test_a_feed_item_published_before_the_cut_and_polled_after_it_goes_in_the_next_edition(
    journeys: Journeys,
) -> None:
    first, second = journeys.digests_to(FEED_READER, "Feeds")
    assert "Before the cut" not in first
    assert "Before the cut" in second
    assert "This week" not in second and "Archive" not in second
