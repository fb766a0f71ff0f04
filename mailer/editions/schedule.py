"""When an edition is due: windows, the schedule's cron and time zone, and making the edition row.

A cron names wall-clock times in the schedule's own zone and each one fires
once (`last_fire`); a fire time missed by more than `CATCH_UP` is dropped.
Making an edition is idempotent (`ON CONFLICT DO NOTHING` on its window), so
beat firing twice or two operators pressing "send" at once make one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.db import conflict_insert
from mailer.editions.errors import DigestError
from mailer.models import (
    Digest,
    EditionStatus,
    Frequency,
    Newsletter,
    Schedule,
    Status,
    Subscription,
    utcnow,
)

log = logging.getLogger(__name__)


PERIOD = {Frequency.DAILY: timedelta(days=1), Frequency.WEEKLY: timedelta(days=7)}
DEFAULT_CRON = {Frequency.DAILY: "0 8 * * *", Frequency.WEEKLY: "0 8 * * MON"}
# How late a missed fire time may still be honoured (beat was down, a deploy...).
# Older fire times are dropped rather than sending yesterday's edition today.
CATCH_UP = timedelta(hours=1)


def window(frequency: Frequency, end: datetime, previous_end: datetime | None) -> datetime:
    """The start of an edition's window: the previous edition's end, or one period back."""
    if previous_end is not None and previous_end < end:
        return previous_end
    return end - PERIOD[frequency]


class ScheduleError(DigestError):
    """A schedule we could not evaluate; `field` says which half is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_cron(cron: str) -> str:
    """The expression as it is stored (single spaces), or ScheduleError. Five fields
    only: croniter would also take a sixth (seconds) that a minute's tick can't keep."""
    cron = " ".join(cron.split())
    if len(cron.split(" ")) != 5 or not croniter.is_valid(cron):
        raise ScheduleError(
            "cron",
            f"{cron!r} is not a valid cron expression: write a five-field one (minute "
            "hour day-of-month month day-of-week), e.g. '0 8 * * MON'.",
        )
    return cron


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            "timezone",
            f"Unknown time zone {name!r}; use an IANA name like Europe/Kyiv or UTC.",
        ) from exc


def check_schedule(cron: str, timezone: str) -> tuple[str, str]:
    """Refuse a schedule we could not evaluate, before it is stored; else the
    (cron, zone) to store."""
    return check_cron(cron), check_timezone(timezone).key


def last_fire(cron: str, timezone: str, now: datetime) -> datetime:
    """The most recent fire time at or before `now`, computed in the schedule's own zone.

    Evaluating in local time is what makes "08:00" stay 08:00 for the reader
    across daylight-saving changes; the result is returned in UTC. A cron
    names wall-clock times, and each one fires once: on the autumn day the
    clock shows 02:00-03:00 twice, a time in that hour fires at its first
    showing only (croniter would fire it at both, so a daily `30 2 * * *`
    went out twice). On the spring day a time the clock skips fires once,
    at the end of the gap (02:30 → 03:00), which is croniter's own answer.
    """
    zone = check_timezone(timezone)
    check_cron(cron)
    it = croniter(cron, now.astimezone(zone) + timedelta(seconds=1))
    for _ in range(4):
        prev: datetime = it.get_prev(datetime)
        if not _second_showing(prev, zone):
            break
    return prev.astimezone(now.tzinfo)


def _second_showing(moment: datetime, zone: ZoneInfo) -> bool:
    """Whether the wall-clock time of `moment` was already shown once, an hour earlier."""
    wall = moment.astimezone(zone)
    return wall.replace(fold=0).astimezone(UTC) < moment.astimezone(UTC)


def due_fire(cron: str, timezone: str, now: datetime, last_end: datetime | None) -> datetime | None:
    """The fire time an edition is owed for, or None when nothing is due."""
    fire = last_fire(cron, timezone, now)
    if now - fire > CATCH_UP:
        return None
    if last_end is not None and last_end >= fire:
        return None
    return fire


@dataclass(frozen=True)
class Due:
    newsletter_id: int
    frequency: Frequency
    fire: datetime
    schedule_id: int | None


def due_editions(session: Session, now: datetime) -> list[Due]:
    """Every (newsletter, frequency) whose schedule has fired and has no edition yet."""
    out: list[Due] = []
    newsletters = session.scalars(
        select(Newsletter).where(Newsletter.paused.is_(False), Newsletter.archived_at.is_(None))
    ).all()
    for nl in newsletters:
        rows = session.scalars(select(Schedule).where(Schedule.newsletter_id == nl.id)).all()
        plans: list[tuple[Frequency, str, str, int | None]] = [
            (s.frequency, s.cron, s.timezone, s.id) for s in rows
        ]
        if not rows:
            active = session.scalars(
                select(Subscription.frequency)
                .where(Subscription.newsletter_id == nl.id, Subscription.status == Status.ACTIVE)
                .distinct()
            ).all()
            plans = [(f, DEFAULT_CRON[f], "UTC", None) for f in Frequency if f in set(active)]
        for frequency, cron, tz, schedule_id in plans:
            last_end = session.scalar(
                select(func.max(Digest.window_end)).where(
                    Digest.newsletter_id == nl.id, Digest.frequency == frequency
                )
            )
            try:
                fire = due_fire(cron, tz, now, last_end)
            except DigestError as exc:
                log.error("newsletter %s: schedule %s skipped: %s", nl.slug, frequency, exc)
                continue
            if fire is not None:
                out.append(Due(nl.id, frequency, fire, schedule_id))
    return out


def create_edition(
    session: Session, newsletter_id: int, frequency: Frequency, end: datetime
) -> Digest:
    """The edition ending at `end`, made if missing; a second call returns the same one."""
    if end.tzinfo is None:
        raise DigestError("an edition's end must be a timezone-aware time")
    previous = session.scalar(
        select(func.max(Digest.window_end)).where(
            Digest.newsletter_id == newsletter_id,
            Digest.frequency == frequency,
            Digest.window_end < end,
        )
    )
    stmt = (
        conflict_insert(session, Digest)
        .values(
            newsletter_id=newsletter_id,
            frequency=frequency,
            window_start=window(frequency, end, previous),
            window_end=end,
            status=EditionStatus.CREATED,
            created_at=utcnow(),
            counts={},
        )
        .on_conflict_do_nothing(index_elements=["newsletter_id", "frequency", "window_end"])
    )
    session.execute(stmt)
    return session.scalars(
        select(Digest).where(
            Digest.newsletter_id == newsletter_id,
            Digest.frequency == frequency,
            Digest.window_end == end,
        )
    ).one()


def create_now(
    session: Session, newsletter: Newsletter, frequency: Frequency, now: datetime | None = None
) -> Digest:
    """An on-demand edition ending now, to the minute, so a double trigger makes one."""
    if newsletter.archived_at is not None:
        raise DigestError(
            f"{newsletter.slug} is archived and sends nothing; "
            f"`mailer newsletter unarchive {newsletter.slug}` first."
        )
    now = now or utcnow()
    return create_edition(session, newsletter.id, frequency, now.replace(second=0, microsecond=0))


def create_due(session: Session, now: datetime | None = None) -> list[int]:
    """Create every edition that is due; returns their ids (new or already there)."""
    now = now or utcnow()
    ids = []
    for due in due_editions(session, now):
        digest = create_edition(session, due.newsletter_id, due.frequency, due.fire)
        if due.schedule_id is not None:
            schedule = session.get_one(Schedule, due.schedule_id)
            schedule.last_run_at = now
        ids.append(digest.id)
    session.flush()
    return ids
