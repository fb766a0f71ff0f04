"""When each newsletter's editions go out: cron and time zone per frequency."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.editions import schedule as edition_schedule
from mailer.models import (
    Frequency,
    Newsletter,
    Schedule,
    utcnow,
)
from mailer.operators.errors import Invalid, NotFound
from mailer.operators.newsletters import newsletter


class ScheduleOut(BaseModel):
    newsletter: str
    frequency: Frequency
    cron: str
    timezone: str
    paused: bool
    next_run_local: datetime | None
    next_run_utc: datetime | None
    last_run_at: datetime | None


def check_schedule(cron: str, timezone: str) -> tuple[str, str]:
    """`digests`' own checks, each refusal tied to its field: (cron, zone) as stored."""
    try:
        return edition_schedule.check_schedule(cron, timezone)
    except edition_schedule.ScheduleError as exc:
        raise Invalid(exc.field, str(exc)) from exc


def next_run(cron: str, timezone: str, now: datetime | None = None) -> datetime:
    """The next fire time, evaluated in the schedule's zone so 08:00 stays 08:00 over DST."""
    local_now = (now or utcnow()).astimezone(edition_schedule.check_timezone(timezone))
    fire: datetime = croniter(cron, local_now).get_next(datetime)
    return fire


def _schedule_out(schedule: Schedule, nl: Newsletter, now: datetime | None) -> ScheduleOut:
    fire = next_run(schedule.cron, schedule.timezone, now)
    return ScheduleOut(
        newsletter=nl.slug,
        frequency=schedule.frequency,
        cron=schedule.cron,
        timezone=schedule.timezone,
        paused=nl.paused,
        next_run_local=fire,
        next_run_utc=fire.astimezone(ZoneInfo("UTC")),
        last_run_at=schedule.last_run_at,
    )


def set_schedule(
    session: Session,
    slug: str,
    frequency: Frequency,
    cron: str,
    timezone: str,
    now: datetime | None = None,
) -> ScheduleOut:
    nl = newsletter(session, slug)
    cron, zone = check_schedule(cron, timezone)
    schedule = session.scalar(
        select(Schedule).where(Schedule.newsletter_id == nl.id, Schedule.frequency == frequency)
    )
    if schedule is None:
        schedule = Schedule(newsletter_id=nl.id, frequency=frequency, cron=cron, timezone=zone)
        session.add(schedule)
    else:
        schedule.cron, schedule.timezone = cron, zone
    session.flush()
    return _schedule_out(schedule, nl, now)


def list_schedules(
    session: Session, slug: str | None = None, now: datetime | None = None
) -> list[ScheduleOut]:
    query = select(Schedule, Newsletter).join(Newsletter, Newsletter.id == Schedule.newsletter_id)
    if slug is not None:
        query = query.where(Newsletter.id == newsletter(session, slug).id)
    rows = session.execute(query.order_by(Newsletter.slug, Schedule.frequency)).all()
    return [_schedule_out(s, nl, now) for s, nl in rows]


def get_schedule(
    session: Session, slug: str, frequency: Frequency, now: datetime | None = None
) -> ScheduleOut:
    found = [s for s in list_schedules(session, slug, now) if s.frequency is frequency]
    if not found:
        raise NotFound(f"Newsletter {slug!r} has no {frequency.value} schedule.")
    return found[0]
