"""Which editions the once-a-minute tick creates, from Schedule rows or the defaults."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailer.cli import main
from mailer.config import ROOT
from mailer.editions import schedule
from mailer.models import Digest, Frequency, Schedule, Status
from mailer.readers import newsletters
from tests.conftest import configure
from tests.helpers.editions import add_article, add_reader

MONDAY_0805 = datetime(2024, 5, 6, 8, 5, tzinfo=UTC)


def newsletter(session, slug: str, *, weekly_reader: bool = True, daily_reader: bool = True):
    nl = newsletters.create_newsletter(session, slug, slug.title(), f"{slug} <{slug}@example.org>")
    if daily_reader:
        sub = add_reader(session, nl, f"daily@{slug}.example.org")
        sub.frequency = Frequency.DAILY
    if weekly_reader:
        sub = add_reader(session, nl, f"weekly@{slug}.example.org")
        sub.frequency = Frequency.WEEKLY
    session.flush()
    return nl


def made(session) -> set[tuple[str, str, datetime]]:
    return {
        (d.newsletter.slug, d.frequency.value, d.window_end)
        for d in session.scalars(select(Digest))
    }


def test_defaults_make_daily_and_weekly_editions_for_the_frequencies_readers_chose(
    session, settings
):
    newsletter(session, "both")
    newsletter(session, "dailyonly", weekly_reader=False)
    eight = MONDAY_0805.replace(minute=0)
    ids = schedule.create_due(session, MONDAY_0805)
    session.commit()
    assert len(ids) == 3
    assert made(session) == {
        ("both", "daily", eight),
        ("both", "weekly", eight),
        ("dailyonly", "daily", eight),
    }
    weekly = session.scalars(select(Digest).where(Digest.frequency == Frequency.WEEKLY)).first()
    assert weekly.window_start == eight - timedelta(days=7)


def test_a_second_tick_in_the_same_period_makes_nothing_new(session, settings):
    newsletter(session, "news")
    first = schedule.create_due(session, MONDAY_0805)
    session.commit()
    assert schedule.due_editions(session, MONDAY_0805 + timedelta(minutes=1)) == []
    # Beat delivering the same tick twice: nothing is due any more.
    assert schedule.create_due(session, MONDAY_0805) == []
    # And creating an edition that exists returns the same row, not a second one.
    again = schedule.create_edition(
        session, session.get(Digest, first[0]).newsletter_id, Frequency.DAILY,
        MONDAY_0805.replace(minute=0),
    )  # fmt: skip
    assert again.id in first
    assert len(session.scalars(select(Digest)).all()) == 2


def test_the_next_days_edition_starts_where_yesterdays_ended(session, settings):
    newsletter(session, "news", weekly_reader=False)
    schedule.create_due(session, MONDAY_0805)
    schedule.create_due(session, MONDAY_0805 + timedelta(days=1))
    session.commit()
    ends = sorted((d.window_start, d.window_end) for d in session.scalars(select(Digest)))
    assert ends[1][0] == ends[0][1]


def test_paused_newsletter_and_one_without_active_readers_make_none(session, settings):
    paused = newsletter(session, "paused")
    paused.paused = True
    quiet = newsletter(session, "quiet", weekly_reader=False, daily_reader=False)
    add_reader(session, quiet, "gone@example.org", status=Status.UNSUBSCRIBED)
    session.flush()
    assert schedule.create_due(session, MONDAY_0805) == []


def test_schedule_rows_replace_the_defaults_in_their_own_time_zone(session, settings):
    nl = newsletter(session, "berlin")
    session.add(
        Schedule(
            newsletter_id=nl.id,
            frequency=Frequency.DAILY,
            cron="0 7 * * *",
            timezone="Europe/Berlin",
        )
    )
    session.flush()
    # 07:00 in Berlin in May is 05:00 UTC; no weekly schedule row, so no weekly edition.
    assert schedule.create_due(session, MONDAY_0805) == []
    ids = schedule.create_due(session, MONDAY_0805.replace(hour=5, minute=10))
    session.commit()
    assert made(session) == {("berlin", "daily", MONDAY_0805.replace(hour=5, minute=0))}
    assert session.scalars(select(Schedule)).one().last_run_at is not None
    assert len(ids) == 1


def test_a_broken_schedule_is_skipped_without_stopping_the_others(session, settings):
    bad = newsletter(session, "bad", weekly_reader=False)
    session.add(Schedule(newsletter_id=bad.id, frequency=Frequency.DAILY, cron="nonsense"))
    newsletter(session, "good", weekly_reader=False)
    session.flush()
    schedule.create_due(session, MONDAY_0805)
    assert {slug for slug, _, _ in made(session)} == {"good"}


def test_operators_own_templates_are_used(session, settings, monkeypatch, tmp_path):
    own = tmp_path / "email"
    shutil.copytree(ROOT / "templates" / "email", own)
    (own / "digest" / "subject.txt").write_text("Custom: {{ articles | length }} new\n")
    configure(monkeypatch, templates_dir=str(own))
    nl = newsletter(session, "news", weekly_reader=False)
    add_article(session, nl, "Story")
    session.commit()
    result = CliRunner().invoke(main, ["digest", "preview", "news", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "<title>Custom: 1 new</title>" in (tmp_path / "p").read_text()


def ticks(start: datetime, hours: int, every: timedelta = timedelta(minutes=1)):
    moment = start
    while moment < start + timedelta(hours=hours):
        yield moment
        moment += every


@pytest.mark.parametrize(
    ("start", "fires"),
    [
        pytest.param(
            # Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
            # It fires at the first showing (CEST), and at 02:30 CET the next day.
            datetime(2026, 10, 24, 20, 0, tzinfo=UTC),
            [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)],
            id="autumn-the-hour-shown-twice-fires-once",
        ),
        pytest.param(
            # Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST; there is no 02:30 that day.
            # It fires once, at 03:00 CEST where the gap ends, and at 02:30 CEST the next day.
            datetime(2026, 3, 28, 20, 0, tzinfo=UTC),
            [datetime(2026, 3, 29, 1, 0, tzinfo=UTC), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)],
            id="spring-the-skipped-time-fires-once-at-the-end-of-the-gap",
        ),
    ],
)
def test_a_daily_cron_fires_once_a_local_day_across_the_dst_changes(
    session, settings, start, fires
):
    nl = newsletter(session, "berlin", weekly_reader=False)
    session.add(
        Schedule(
            newsletter_id=nl.id,
            frequency=Frequency.DAILY,
            cron="30 2 * * *",
            timezone="Europe/Berlin",
        )
    )
    session.flush()
    for now in ticks(start, hours=30):
        schedule.create_due(session, now)
    session.commit()
    assert sorted(end for _, _, end in made(session)) == fires
