"""Editions from the operator's side: preview, send now, watch, cancel.

The API, the admin page and `mailer digest` share these, so "send now" means the
same edition (one per minute) and "cancel" the same rule wherever it is pressed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.content import feeds
from mailer.db import session_scope
from mailer.editions import close, errors, prepare, preview, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import (
    MAX_ID,
    Delivery,
    DeliveryStatus,
    Digest,
    EditionStatus,
    Frequency,
    Newsletter,
    Subscriber,
    Subscription,
    utcnow,
)
from mailer.operators.errors import Conflict, Invalid, NotFound
from mailer.operators.newsletters import newsletter
from mailer.operators.paging import decode_cursor, encode_cursor
from mailer.operators.subscribers import find_subscriber

#
# The API, the admin page and `mailer digest` share these, so "send now" means the same
# edition (one per minute) and "cancel" the same rule wherever it is pressed.

# Rows a cancel stops: those waiting for a worker. A row in `sending` is held by a worker in
# mid-conversation and finishes normally; its outcome is the truth about that reader.
WAITING = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)
# Sent once already with no reply heard; cancelling stops the resend, but the reader may have
# the mail, so their articles stay reserved rather than arriving again next time.
MAYBE_SENT = (DeliveryStatus.UNKNOWN,)


class EditionOut(BaseModel):
    id: int
    newsletter: str
    frequency: Frequency
    window_start: datetime
    window_end: datetime
    status: EditionStatus
    created_at: datetime
    prepared_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]


class EditionPage(BaseModel):
    items: list[EditionOut]
    next_cursor: str | None


class SendNowOut(BaseModel):
    edition: EditionOut
    new: bool


class CancelReport(BaseModel):
    edition: EditionOut
    cancelled: int
    released: int
    still_sending: int


class EditionDelivery(BaseModel):
    id: int
    subscription_id: int
    address: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    smtp_code: int | None
    smtp_reply: str | None
    message_id: str | None
    sent_at: datetime | None
    updated_at: datetime


class DeliveryPage(BaseModel):
    items: list[EditionDelivery]
    next_cursor: str | None


@dataclass(frozen=True)
class Preview:
    html: str
    subject: str
    frequency: Frequency
    window_start: datetime
    window_end: datetime
    articles: int


def _live_counts(session: Session, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Counts read from the delivery rows, not the edition's stored tally, which is only
    refreshed when a batch closes (and never after a cancel, while in-flight rows finish)."""
    out: dict[int, dict[str, int]] = defaultdict(dict)
    if ids:
        for digest_id, state, n in session.execute(
            select(Delivery.digest_id, Delivery.status, func.count())
            .where(Delivery.digest_id.in_(ids))
            .group_by(Delivery.digest_id, Delivery.status)
        ):
            out[digest_id][DeliveryStatus(state).value] = n
    return out


def _edition_out(digest: Digest, slug: str, counts: dict[str, int]) -> EditionOut:
    return EditionOut(
        id=digest.id,
        newsletter=slug,
        frequency=digest.frequency,
        window_start=digest.window_start,
        window_end=digest.window_end,
        status=digest.status,
        created_at=digest.created_at,
        prepared_at=digest.prepared_at,
        finished_at=digest.finished_at,
        counts=counts,
    )


def find_edition(session: Session, digest_id: int) -> Digest:
    found = session.get(Digest, digest_id) if 0 < digest_id <= MAX_ID else None
    if found is None:
        raise NotFound(f"There is no edition {digest_id}.")
    return found


def edition_out(session: Session, digest_id: int) -> EditionOut:
    """One edition with its delivery counts as they are right now."""
    digest = find_edition(session, digest_id)
    return _edition_out(
        digest, digest.newsletter.slug, _live_counts(session, [digest.id])[digest.id]
    )


def list_editions(
    session: Session, slug: str, *, cursor: str | None = None, limit: int = 20
) -> EditionPage:
    """A newsletter's editions, newest first; the cursor is the last id seen."""
    if not 1 <= limit <= 200:
        raise Invalid("limit", "limit must be between 1 and 200.")
    nl = newsletter(session, slug)
    query = select(Digest).where(Digest.newsletter_id == nl.id)
    if cursor:
        query = query.where(Digest.id < decode_cursor(cursor))
    rows = session.scalars(query.order_by(Digest.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    live = _live_counts(session, [d.id for d in page])
    return EditionPage(
        items=[_edition_out(d, nl.slug, live[d.id]) for d in page],
        next_cursor=encode_cursor(page[-1].id) if len(rows) > limit and page else None,
    )


def problem_deliveries(session: Session, digest_id: int, limit: int = 10) -> list[EditionDelivery]:
    """A few of an edition's deliveries that did not simply go out (deferred, failed,
    unknown): what an operator looks at first."""
    return list_deliveries(
        session,
        digest_id,
        statuses=(DeliveryStatus.DEFERRED, DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN),
        limit=limit,
    ).items


def recent_editions(session: Session, slug: str | None = None, limit: int = 20) -> list[EditionOut]:
    """The newest editions of every newsletter (or one), with live delivery counts."""
    query = select(Digest, Newsletter.slug).join(Newsletter, Newsletter.id == Digest.newsletter_id)
    if slug is not None:
        query = query.where(Digest.newsletter_id == newsletter(session, slug).id)
    rows = session.execute(query.order_by(Digest.id.desc()).limit(limit)).all()
    live = _live_counts(session, [d.id for d, _ in rows])
    return [_edition_out(d, nl_slug, live[d.id]) for d, nl_slug in rows]


def send_now(
    session: Session, slug: str, frequency: Frequency | None = None, now: datetime | None = None
) -> tuple[Digest, bool]:
    """The edition ending this minute, and whether this call made it.

    Pressing twice in one minute names the same edition; the caller enqueues its
    prepare (after commit) only when it is new, so a double press sends nothing twice.
    """
    nl = newsletter(session, slug)
    freq = frequency or nl.default_frequency
    end = (now or utcnow()).replace(second=0, microsecond=0)
    existed = session.scalar(
        select(Digest.id).where(
            Digest.newsletter_id == nl.id, Digest.frequency == freq, Digest.window_end == end
        )
    )
    try:
        digest = schedule.create_now(session, nl, freq, end)
    except errors.DigestError as exc:
        raise Conflict(str(exc)) from exc
    session.flush()
    return digest, existed is None


def poll_before_cut(settings: Settings, digest_id: int) -> None:
    """Before an edition is cut: its newsletter's due feeds, bounded by the feed timeout.
    An edition already prepared (a redelivered task) polls nothing."""
    with session_scope(settings.database) as session:
        digest = session.get(Digest, digest_id)
        if digest is None or digest.status != "created":
            return
        newsletter_id = digest.newsletter_id
    feeds.poll_before_cut(settings, newsletter_id)


def prepare_edition(
    session: Session, settings: Settings, renderer: EmailRenderer, digest_id: int
) -> prepare.Prepared:
    """Write an edition's delivery rows (once: a second call finds them written), and
    close it at once when nobody is left to mail. Whoever made the edition comes here
    next: the worker's prepare task (after `send_now` from the API or admin, or a
    schedule) and `mailer digest send`, which waits for it to print the counts."""
    prepared = prepare.prepare(session, settings, renderer, digest_id)
    if not prepared.ranges:
        close.close_if_done(session, digest_id)
    return prepared


def cancel_edition(session: Session, digest_id: int, now: datetime | None = None) -> CancelReport:
    """Stop an edition: waiting deliveries become `cancelled`, rows in flight finish.

    Conditional UPDATEs (status still waiting) race safely with a worker's claim:
    a row it claimed first is `sending` and no longer matches; a row cancelled first
    is no longer claimable. Cancelled readers get their reserved articles back, so
    the next edition brings them. Cancelling again sweeps rows that came back to
    the queue since (a worker died mid-batch); a finished edition is refused.
    """
    now = now or utcnow()
    find_edition(session, digest_id)
    query = select(Digest).where(Digest.id == digest_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()  # waits for a prepare in progress to commit
    digest = session.scalars(query.execution_options(populate_existing=True)).one()
    if digest.status is EditionStatus.DONE:
        raise Conflict(f"Edition {digest_id} has finished sending; there is nothing to cancel.")

    def stop(states: tuple[DeliveryStatus, ...], release: bool) -> list[int]:
        values: dict[str, Any] = {
            "status": DeliveryStatus.CANCELLED,
            "next_attempt_at": None,
            "lease_until": None,
            "updated_at": now,
        }
        if release:
            values["released"] = True
        return list(
            session.scalars(
                update(Delivery)
                .where(Delivery.digest_id == digest_id, Delivery.status.in_(states))
                .values(**values)
                .returning(Delivery.subscription_id)
                .execution_options(synchronize_session=False)
            )
        )

    released = stop(WAITING, release=True)
    cancelled = len(released) + len(stop(MAYBE_SENT, release=False))
    if digest.status is not EditionStatus.CANCELLED:
        digest.status = EditionStatus.CANCELLED
        digest.finished_at = now
    live = _live_counts(session, [digest_id])[digest_id]
    digest.counts = live
    session.flush()
    return CancelReport(
        edition=_edition_out(digest, digest.newsletter.slug, live),
        cancelled=cancelled,
        released=len(released),
        still_sending=live.get(DeliveryStatus.SENDING.value, 0),
    )


def sweep_cancelled(session: Session, now: datetime | None = None) -> list[int]:
    """Cancel again the editions whose rows came back after their cancel.

    A row in flight at cancel time may still be deferred by a late 4xx, and a
    dead worker's rows are put back in the queue by lease recovery; nothing
    sends them, but they would stay open and keep their reserved articles. The
    tick calls this so a cancel is final without a second press.
    """
    stray = (
        select(Delivery.digest_id)
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(Digest.status == EditionStatus.CANCELLED, Delivery.status.in_(WAITING + MAYBE_SENT))
        .distinct()
    )
    swept = list(session.scalars(stray))
    for digest_id in swept:
        cancel_edition(session, digest_id, now)
    return swept


def list_deliveries(
    session: Session,
    digest_id: int,
    *,
    statuses: Sequence[DeliveryStatus] = (),
    cursor: str | None = None,
    limit: int = 100,
) -> DeliveryPage:
    """An edition's deliveries in id order, optionally only some statuses."""
    if not 1 <= limit <= 1000:
        raise Invalid("limit", "limit must be between 1 and 1000.")
    find_edition(session, digest_id)
    query = (
        select(Delivery, Subscriber.email)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.digest_id == digest_id)
    )
    if statuses:
        query = query.where(Delivery.status.in_(list(statuses)))
    if cursor:
        query = query.where(Delivery.id > decode_cursor(cursor))
    rows = session.execute(query.order_by(Delivery.id).limit(limit + 1)).all()
    page = rows[:limit]
    return DeliveryPage(
        items=[
            EditionDelivery(
                id=d.id,
                subscription_id=d.subscription_id,
                address=email,
                status=d.status,
                attempts=d.attempts,
                next_attempt_at=d.next_attempt_at,
                smtp_code=d.smtp_code,
                smtp_reply=d.smtp_reply,
                message_id=d.message_id,
                sent_at=d.sent_at,
                updated_at=d.updated_at,
            )
            for d, email in page
        ],
        next_cursor=encode_cursor(page[-1][0].id) if len(rows) > limit and page else None,
    )


def preview_edition(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    slug: str,
    *,
    frequency: Frequency | None = None,
    subscriber: str | None = None,
    now: datetime | None = None,
) -> Preview:
    """The next edition's HTML (the same `preview.draft` the CLI preview uses), written nowhere.

    For one subscriber (id or address) it is their selection with their own links;
    otherwise an all-topics reader who has seen nothing, with neutral stand-ins.
    """
    nl = newsletter(session, slug)
    sub: Subscription | None = None
    if subscriber is not None:
        found = find_subscriber(session, subscriber)
        sub = next((s for s in found.subscriptions if s.newsletter_id == nl.id), None)
        if sub is None:
            raise NotFound(f"Subscriber {subscriber!r} is not subscribed to {slug!r}.")
    try:
        draft = preview.draft(
            session,
            settings,
            renderer,
            nl,
            email=sub.subscriber.email if sub else None,
            frequency=frequency,
            now=now,
        )
    except errors.DigestError as exc:
        raise Conflict(str(exc)) from exc
    return Preview(
        html=preview.draft_html(settings, draft),
        subject=draft.rendered.subject,
        frequency=draft.frequency,
        window_start=draft.window_start,
        window_end=draft.window_end,
        articles=len(draft.article_ids),
    )
