"""`mailer schedule` and `mailer stats` through click, against PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Newsletter,
    Schedule,
    Status,
    Subscription,
    SubscriptionEvent,
    utcnow,
)
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from tests.helpers.cli import run, run_json


@pytest.fixture
def newsletter(session):
    nl = newsletters.create_newsletter(session, "weekly", "Weekly", "Weekly <news@example.org>")
    session.commit()
    return nl


def schedules(session):
    session.expire_all()
    return session.execute(select(Schedule.frequency, Schedule.cron, Schedule.timezone)).all()


def test_schedule_set_then_list_round_trips_in_the_newsletters_zone(settings, session, newsletter):
    result = run(
        "schedule",
        "set",
        "weekly",
        "--frequency",
        "weekly",
        "--cron",
        "0 8 * * MON",
        "--tz",
        "Europe/Kyiv",
    )
    assert result.exit_code == 0, result.output
    assert "08:00 EE" in result.output  # EET or EEST: 08:00 local, whatever the season
    assert schedules(session) == [(Frequency.WEEKLY, "0 8 * * MON", "Europe/Kyiv")]

    result = run("schedule", "set", "weekly", "--frequency", "weekly", "--cron", "30 7 * * *")
    assert result.exit_code == 0
    assert schedules(session) == [(Frequency.WEEKLY, "30 7 * * *", "UTC")]

    listed = run("schedule", "list")
    assert listed.exit_code == 0
    assert "weekly" in listed.output and "30 7 * * *" in listed.output


@pytest.mark.parametrize(
    ("cron", "tz", "says"),
    [
        ("0 25 * * *", "UTC", "cron"),
        ("0 8 * *", "UTC", "five-field"),
        ("0 8 * * * *", "UTC", "five-field"),
        ("0 8 * * MON", "Europe/Atlantis", "IANA"),
        ("0 8 * * MON", "../etc/passwd", "IANA"),
    ],
)
def test_bad_cron_or_time_zone_is_refused_with_a_reason_and_stores_nothing(
    settings, session, newsletter, cron, tz, says
):
    result = run("schedule", "set", "weekly", "--frequency", "weekly", "--cron", cron, "--tz", tz)
    assert result.exit_code == 1 and says in result.output
    assert schedules(session) == []


def test_schedule_for_an_unknown_newsletter_fails(settings, session, newsletter):
    result = run("schedule", "set", "nope", "--frequency", "daily", "--cron", "0 8 * * *")
    assert result.exit_code == 1 and "no newsletter 'nope'" in result.output


def test_pause_and_resume(settings, session, newsletter):
    assert run("schedule", "pause", "weekly").exit_code == 0
    session.expire_all()
    assert session.scalar(select(Newsletter.paused)) is True
    assert run("schedule", "resume", "weekly").exit_code == 0
    session.expire_all()
    assert session.scalar(select(Newsletter.paused)) is False


def test_stats_show_readers_growth_and_the_last_edition(settings, session, newsletter):
    now = utcnow()
    for i in range(3):
        subs.subscribe(session, email=f"r{i}@example.org", newsletter="weekly", confirmed=True)
    old = subs.subscribe(session, email="old@example.org", newsletter="weekly", confirmed=True)
    session.execute(
        SubscriptionEvent.__table__.update()
        .where(SubscriptionEvent.subscription_id == old.subscription_id)
        .values(at=now - timedelta(days=20))
    )
    subs.subscribe(session, email="p@example.org", newsletter="weekly")
    digest = Digest(
        newsletter_id=newsletter.id,
        frequency=Frequency.WEEKLY,
        window_start=now - timedelta(days=7),
        window_end=now,
        status="done",
    )
    session.add(digest)
    session.flush()
    subs_ids = session.scalars(
        select(Subscription.id).where(Subscription.status == Status.ACTIVE)
    ).all()
    for sid, state in zip(
        subs_ids,
        [DeliveryStatus.SENT, DeliveryStatus.SENT, DeliveryStatus.SENT, DeliveryStatus.FAILED],
        strict=True,
    ):
        session.add(Delivery(digest_id=digest.id, subscription_id=sid, status=state))
    session.commit()
    assert session.scalar(select(func.count()).select_from(Delivery)) == 4

    [row] = run_json("stats")
    assert row["by_status"] == {
        "pending": 1, "active": 4, "unsubscribed": 0, "bounced": 0, "complained": 0
    }  # fmt: skip
    assert (row["new_active_7d"], row["new_active_30d"]) == (3, 4)
    result = run("stats", width=200)
    assert result.exit_code == 0, result.output
    readers_line = next(line for line in result.output.splitlines() if "pending" in line)
    assert readers_line.split() == ["weekly", "1", "pending", "3", "4"]
    assert "4 active" in result.output
    edition_line = next(line for line in result.output.splitlines() if "25.0%" in line)
    assert "done" in edition_line and "3 sent" in edition_line
