"""Celery tasks: thin wrappers that open a session, call one domain function, enqueue.

Follow-up tasks are sent only after the transaction that made their rows
has committed, so a worker never looks for a row that is not there yet.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from celery import Task

from mailer import broker, throttle
from mailer.bounces import mailboxes
from mailer.celery_app import app
from mailer.config import get_settings
from mailer.content import feeds
from mailer.db import session_factory, session_scope
from mailer.editions import close, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.mail.transport import kept
from mailer.operators import editions as editions_ops
from mailer.readers import newsletters, notices, subscriptions
from mailer.sending import loop, senders, sweeps
from mailer.sending.ratelimit import limiter_for

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def renderer() -> EmailRenderer:
    return EmailRenderer(get_settings().email_templates)


@app.task(bind=True, name="mailer.tasks.send_notice", max_retries=8)
def send_notice(self: Task, note_id: int) -> str:
    settings = get_settings()
    session = session_factory(settings.database)()
    try:
        return notices.send_notice(session, settings, renderer(), note_id)
    except notices.TemporaryFailure as exc:
        raise self.retry(exc=exc, countdown=min(600, 30 * 2**self.request.retries)) from exc
    finally:
        session.close()


def enqueue_notices(note_ids: list[int]) -> None:
    """Call after commit. A failure to reach the broker is not fatal: the tick sweeps."""
    for note_id in note_ids:
        try:
            send_notice.delay(note_id)
        except Exception:  # the row waits in the database; the tick will send it
            log.warning("could not enqueue notice %s; the next tick will", note_id, exc_info=True)


@app.task(name="mailer.tasks.subscribe")
def subscribe(request: dict[str, Any]) -> str:
    """A reader's subscribe request, validated by the web already; done here so the
    web's answer takes the same time whether or not the address is known."""
    settings = get_settings()
    request = dict(request)
    requested_at = datetime.fromisoformat(request.pop("requested_at"))
    try:
        with session_scope(settings.database) as session:
            outcome = subscriptions.subscribe(
                session,
                **request,
                now=requested_at,
                check_deliverability=settings.check_deliverability,
                resend_interval=settings.confirm_resend_interval,
            )
    except newsletters.SubscriptionError as exc:  # changed since the web checked it
        log.info("subscribe request refused: %s", exc)
        return "refused"
    enqueue_notices(outcome.notification_ids)
    return outcome.state


@app.task(name="mailer.tasks.tick")
def tick() -> None:
    """Once a minute: everything that is due and waits in the database."""
    settings = get_settings()
    with session_scope(settings.database) as session:
        lost = notices.due_notices(session, older_than=120, max_attempts=settings.send_max_attempts)
        purged = subscriptions.purge_pending(
            session, timedelta(seconds=settings.pending_purge_after)
        )
        throttle.forget_before(session, time.time() - 86400)
    if purged:
        log.info("purged %d unconfirmed subscriptions", purged)
    broker.purge_consumed(settings)
    enqueue_notices(lost)
    digest_tick()
    enqueue_feed_polls()
    enqueue_bounce_poll()


@app.task(name="mailer.tasks.poll_feed")
def poll_feed(feed_id: int) -> str:
    """One feed, fetched outside any transaction; its failure is recorded, never raised."""
    return feeds.poll(get_settings(), feed_id).describe()


def enqueue_feed_polls() -> None:
    """Send a poll for every due feed; each feed's own interval (and backoff) decides."""
    settings = get_settings()
    with session_scope(settings.database) as session:
        due = feeds.claim_due_feeds(session)
    for feed_id in due:
        try:
            poll_feed.delay(feed_id)
        except Exception:  # the claim lapses after feeds.CLAIM_LEASE; a later tick retries
            log.warning("could not enqueue a poll of feed %s", feed_id, exc_info=True)


# -- digests ---------------------------------------------------------------------------


def _enqueue(task: Task, *args: int) -> None:
    try:
        task.delay(*args)
    except Exception:  # the rows wait in the database; the tick will enqueue them again
        log.warning("could not enqueue %s%s; the next tick will", task.name, args, exc_info=True)


def enqueue_prepare(digest_ids: list[int]) -> None:
    """Call after commit."""
    for digest_id in digest_ids:
        _enqueue(prepare_digest, digest_id)


def enqueue_sends(ranges: list[tuple[int, int, int]]) -> None:
    """Call after commit: one send task per (edition, lo, hi) range."""
    for digest_id, lo, hi in ranges:
        _enqueue(send_digest_batch, digest_id, lo, hi)


@app.task(name="mailer.tasks.prepare_digest")
def prepare_digest(digest_id: int) -> int:
    """Poll the newsletter's due feeds (bounded by the feed timeout), then cut and prepare."""
    settings = get_settings()
    editions_ops.poll_before_cut(settings, digest_id)
    with session_scope(settings.database) as session:
        prepared = editions_ops.prepare_edition(session, settings, renderer(), digest_id)
    enqueue_sends([(digest_id, lo, hi) for lo, hi in prepared.ranges])
    return prepared.queued


@app.task(bind=True, name="mailer.tasks.send_digest_batch", max_retries=5)
def send_digest_batch(self: Task, digest_id: int, lo: int, hi: int) -> int:
    settings = get_settings()
    session = session_factory(settings.database)()
    try:
        # Beats while it sends: if this worker dies, the tick hands its rows back in
        # seconds instead of after their leases (mailer/sending/senders.py).
        with senders.at_work(session, settings.database, digest_id, lo, hi):
            result = loop.send_range(
                session,
                settings,
                digest_id,
                lo,
                hi,
                limiter=limiter_for(settings),
                connections=kept(settings.smtp, settings.smtp_timeout),
            )
        # Counting every status of a 100,000-row edition after each of its 500
        # batches cost more than the batches' own queries; the batch that finds
        # nothing open closes it, and the tick refreshes the counts meanwhile.
        session.expire_all()  # the edition as it is now (an operator may have cancelled it)
        if not close.has_open(session, digest_id):
            close.close_if_done(session, digest_id)
        session.commit()
    except loop.TemporaryFailure as exc:
        # A short wait only; anything longer waits in the database for the tick.
        raise self.retry(exc=exc, countdown=min(60, 5 * 2**self.request.retries)) from exc
    finally:
        session.close()
    return result.sent


def digest_tick() -> None:
    """Due editions, lost prepares, expired leases, due retries, finished editions."""
    settings = get_settings()
    lease = timedelta(seconds=settings.send_lease)
    with session_scope(settings.database) as session:
        created = schedule.create_due(session)
        created += close.stale_unprepared(session, older_than=lease)
        orphaned = senders.reclaim_dead(session)  # ends their leases: recovered next line
        sweeps.recover_expired(session, settings)
        editions_ops.sweep_cancelled(session)
        ranges = sweeps.due_ranges(session, settings)
        close.close_finished(session)
    enqueue_prepare(sorted(set(created)))
    enqueue_sends(sorted(set(ranges + orphaned)))


# -- bounces ---------------------------------------------------------------------------


@app.task(name="mailer.tasks.poll_bounces")
def poll_bounces() -> dict[str, int]:
    """Read the bounce mailbox once; each report is its own committed unit of work."""
    result = mailboxes.poll(get_settings())
    return {"seen": result.seen, "applied": result.applied, "ignored": result.ignored}


def enqueue_bounce_poll() -> None:
    """Once a tick, when a bounce mailbox is configured; a poll not started within
    the minute expires, so a slow mailbox never piles up overlapping polls."""
    if not mailboxes.mailbox_configured(get_settings()):
        return
    try:
        poll_bounces.apply_async(expires=55)
    except Exception:  # the reports wait in the mailbox; the next tick tries again
        log.warning("could not enqueue a bounce poll; the next tick will", exc_info=True)
