"""Beat firing twice, two operators pressing "send" at once: one edition, one mail each.

Each side runs in its own thread with its own PostgreSQL connection and calls
the real functions (the tick's `create_due`; the CLI's `create_now` + `prepare`),
released together by a barrier so the inserts and the row lock really race.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer import db
from mailer.config import Settings
from mailer.editions import prepare, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import Delivery, Digest, Frequency, Newsletter, Schedule, utcnow
from mailer.sending import loop
from tests.helpers.editions import add_article, add_readers_bulk, make_newsletter
from tests.smtp import SMTPServer

READERS = 200


def race(settings: Settings, work: Callable[[Session], Any], n: int = 2) -> list[Any]:
    """Run `work` in n threads at once, each in its own session and transaction."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        with db.session_scope(settings.database) as session:
            barrier.wait(timeout=10)
            try:
                results[i] = work(session)
            except BaseException as exc:  # reported below, with the test's traceback
                errors.append(exc)
                raise

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_beat_firing_twice_for_the_same_window_makes_one_edition(session, settings):
    nl = make_newsletter(session)
    add_readers_bulk(session, nl, 3)
    now = utcnow().replace(second=30, microsecond=0)
    row = session.scalars(select(Schedule).where(Schedule.newsletter_id == nl.id)).one()
    row.cron = f"{now.minute} {now.hour} * * *"  # fired 30 s ago, in UTC
    session.commit()

    created = race(settings, lambda s: schedule.create_due(s, now), n=3)

    # Whichever beat got there first made the edition; the others found it made
    # (or met it in the unique constraint) and made none of their own.
    assert len({edition for ids in created for edition in ids}) == 1
    assert session.scalar(select(func.count()).select_from(Digest)) == 1


def test_two_operators_sending_at_once_make_one_edition_and_one_mail_per_reader(
    session, settings, smtp_server: SMTPServer
):
    nl = make_newsletter(session)
    add_readers_bulk(session, nl, READERS)
    add_article(session, nl, "Story")
    session.commit()
    renderer = EmailRenderer(settings.email_templates)
    now = utcnow()

    def press_send(s: Session) -> tuple[int, list[tuple[int, int]]]:
        """What `mailer digest send` does before it enqueues the batches."""
        edition = schedule.create_now(s, s.get_one(Newsletter, nl.id), Frequency.DAILY, now)
        prepared = prepare.prepare(s, settings, renderer, edition.id)
        return edition.id, prepared.ranges

    (first_id, first_ranges), (second_id, second_ranges) = race(settings, press_send)
    assert first_id == second_id
    assert session.scalar(select(func.count()).select_from(Digest)) == 1
    assert session.scalar(select(func.count()).select_from(Delivery)) == READERS

    # Both operators' batches go out, on two workers at once.
    def send_all(s: Session, ranges: list[tuple[int, int]]) -> int:
        return sum(loop.send_range(s, settings, first_id, lo, hi).sent for lo, hi in ranges)

    batches = iter([first_ranges, second_ranges])
    lock = threading.Lock()

    def worker(s: Session) -> int:
        with lock:
            ranges = next(batches)
        return send_all(s, ranges)

    sent = race(settings, worker)
    assert sum(sent) == READERS
    per_reader = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert len(per_reader) == READERS and set(per_reader.values()) == {1}
