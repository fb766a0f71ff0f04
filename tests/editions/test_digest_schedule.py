"""Windows and schedule due-ness: pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailer.editions.errors import DigestError
from mailer.editions.schedule import check_schedule, due_fire, last_fire, window
from mailer.models import Frequency


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_first_edition_window_reaches_back_one_period():
    end = utc(2024, 5, 6, 8)
    assert window(Frequency.DAILY, end, None) == utc(2024, 5, 5, 8)
    assert window(Frequency.WEEKLY, end, None) == utc(2024, 4, 29, 8)


def test_later_edition_window_starts_where_the_previous_ended():
    end = utc(2024, 5, 6, 8)
    # Even after a gap of three days: nothing published meanwhile is skipped.
    assert window(Frequency.DAILY, end, utc(2024, 5, 3, 8)) == utc(2024, 5, 3, 8)


def test_previous_end_not_before_this_end_is_ignored():
    end = utc(2024, 5, 6, 8)
    assert window(Frequency.DAILY, end, end) == utc(2024, 5, 5, 8)


def test_local_eight_oclock_moves_in_utc_across_the_spring_dst_change():
    # Berlin: CET (UTC+1) until 31 March 2024 02:00, then CEST (UTC+2).
    before = last_fire("0 8 * * *", "Europe/Berlin", utc(2024, 3, 30, 12))
    after = last_fire("0 8 * * *", "Europe/Berlin", utc(2024, 3, 31, 12))
    assert before == utc(2024, 3, 30, 7)
    assert after == utc(2024, 3, 31, 6)
    assert after - before == timedelta(hours=23)


def test_schedule_is_due_at_local_time_on_the_day_of_the_dst_change():
    cron, tz = "0 8 * * *", "Europe/Berlin"
    last_end = utc(2024, 3, 30, 7)  # yesterday's edition, 08:00 CET
    # 06:30 UTC on the change day is 08:30 CEST: due, for 08:00 CEST. (Kept at
    # yesterday's UTC+1 offset it would wrongly wait until 07:00 UTC.)
    assert due_fire(cron, tz, utc(2024, 3, 31, 6, 30), last_end) == utc(2024, 3, 31, 6)
    # 05:30 UTC is 07:30 CEST: the last fire time is still yesterday's, already covered.
    assert due_fire(cron, tz, utc(2024, 3, 31, 5, 30), last_end) is None


def test_autumn_dst_change_fires_once_for_the_repeated_hour():
    # 27 October 2024: 02:00-03:00 happens twice in Berlin.
    cron, tz = "30 2 * * *", "Europe/Berlin"
    first = last_fire(cron, tz, utc(2024, 10, 27, 0, 45))  # 02:45 CEST
    assert first == utc(2024, 10, 27, 0, 30)
    # An hour later the clock reads 02:45 again (CET); the edition already covers it.
    assert due_fire(cron, tz, utc(2024, 10, 27, 1, 45), last_end=first) is None


def test_weekly_default_is_due_only_on_monday_morning():
    cron = "0 8 * * MON"
    monday = utc(2024, 5, 6, 8, 1)
    assert due_fire(cron, "UTC", monday, None) == utc(2024, 5, 6, 8)
    assert due_fire(cron, "UTC", monday + timedelta(days=1), None) is None


def test_fire_time_already_covered_by_an_edition_is_not_due_again():
    now = utc(2024, 5, 6, 8, 5)
    assert due_fire("0 8 * * *", "UTC", now, last_end=utc(2024, 5, 6, 8)) is None


def test_a_fire_time_missed_by_more_than_the_catch_up_is_dropped():
    # beat was down all morning: don't send the 08:00 edition at 14:00.
    assert due_fire("0 8 * * *", "UTC", utc(2024, 5, 6, 14), None) is None


@pytest.mark.parametrize(
    ("cron", "tz", "message"),
    [
        ("0 8 * *", "UTC", "not a valid cron"),
        ("61 8 * * *", "UTC", "not a valid cron"),
        ("0 8 * * *", "Mars/Olympus", "Unknown time zone"),
    ],
)
def test_bad_schedule_is_refused_with_a_clear_error(cron, tz, message):
    with pytest.raises(DigestError, match=message):
        check_schedule(cron, tz)
