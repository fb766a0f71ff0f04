"""Transactional mail (confirm, welcome): rendered per reader, sent once.

These go to one reader at a time, so there is no variant sharing; the row
in `notification` is claimed with a conditional UPDATE before sending, so a
task delivered twice by the broker, or a sweep racing a task, sends once.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from datetime import timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.mail.dkim import sign_if_configured
from mailer.mail.links import Links
from mailer.mail.messages import MessageTemplate, ascii_domain, list_id_value
from mailer.mail.rendering import EmailRenderer
from mailer.mail.transport import ConnectionLost, Reply, close, connect, send
from mailer.mail.verp import return_paths
from mailer.models import Newsletter, NoticeStatus, Notification, Status, Subscription, utcnow
from mailer.readers.subscriptions import bounce_at_send, reset_soft_bounces
from mailer.readers.suppressions import may_send

# Which subscription status a notice still makes sense for.
VALID_FOR = {"confirm": Status.PENDING, "welcome": Status.ACTIVE}


class TemporaryFailure(RuntimeError):
    """Try again later: the server deferred or the connection broke."""


def list_id(newsletter: Newsletter, settings: Settings) -> str:
    """`List-Id`: the name as a quoted or encoded phrase, the id `<slug>.<our host>` in ASCII."""
    return list_id_value(newsletter.name, f"{newsletter.slug}.{ascii_domain(settings.base_host)}")


def unsubscribe_mailto(newsletter: Newsletter, settings: Settings) -> str:
    return settings.unsubscribe_mailto or parseaddr(newsletter.sender)[1]


NoticeContext = Callable[[Settings, Links, Newsletter, Subscription], dict[str, Any]]
# What each kind's templates see (templates/email/<kind>/), one builder per kind, as
# warehouse keeps its email kinds; the digest's is `editions.render.context_for`.
CONTEXTS: dict[str, NoticeContext] = {}


def _kind(name: str) -> Callable[[NoticeContext], NoticeContext]:
    def register(build: NoticeContext) -> NoticeContext:
        CONTEXTS[name] = build
        return build

    return register


@_kind("confirm")
def confirm_context(
    settings: Settings, links: Links, nl: Newsletter, sub: Subscription
) -> dict[str, Any]:
    """The link that activates the subscription, and how long it stays good."""
    return {
        "newsletter_name": nl.name,
        "email_placeholder": sub.subscriber.email,
        "confirm_url": links.confirm(sub),
        "confirm_days": max(1, settings.confirm_max_age // 86400),
    }


@_kind("welcome")
def welcome_context(
    settings: Settings, links: Links, nl: Newsletter, sub: Subscription
) -> dict[str, Any]:
    """What the reader chose, and where to change it or leave."""
    return {
        "newsletter_name": nl.name,
        "email_placeholder": sub.subscriber.email,
        "preferences_url": links.preferences(sub),
        "unsubscribe_url": links.unsubscribe(sub),
        "frequency": sub.frequency.value,
        "topics": [t.name for t in sub.topics],
    }


def build_notice(
    session: Session, settings: Settings, renderer: EmailRenderer, note: Notification
) -> tuple[Subscription, bytes, str]:
    sub = session.get_one(Subscription, note.subscription_id)
    nl = session.get_one(Newsletter, sub.newsletter_id)
    links = Links.from_settings(settings)
    context = CONTEXTS[note.kind](settings, links, nl, sub)
    # One token for the body's link and the header's (a timed token can differ by the second).
    unsubscribe = context.get("unsubscribe_url") or links.unsubscribe(sub)
    rendered = renderer.render(note.kind, context)
    template = MessageTemplate(
        sender=nl.sender,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        list_id=list_id(nl, settings),
        list_unsubscribe_mailto=unsubscribe_mailto(nl, settings),
    )
    # Every mail can be refused in one click, the confirm mail too: for someone who
    # never asked, "never mail me" is the answer they need.
    data, message_id = template.build(sub.subscriber.email, unsubscribe_url=unsubscribe)
    return sub, data, message_id


def claim(session: Session, note_id: int, lease: int) -> bool:
    """Take the notice for sending; False when another sender has it or it is done."""
    now = utcnow()
    result = session.execute(
        update(Notification)
        .where(
            Notification.id == note_id,
            (Notification.status == NoticeStatus.QUEUED)
            | (
                (Notification.status == NoticeStatus.SENDING)
                & (Notification.sent_at < now - timedelta(seconds=lease))
            ),
        )
        .values(status=NoticeStatus.SENDING, sent_at=now, attempts=Notification.attempts + 1)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def send_notice(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    note_id: int,
    opener: Callable[[], smtplib.SMTP] | None = None,
) -> str:
    """Send one queued notice; returns its final status. Raises TemporaryFailure to retry."""
    if not claim(session, note_id, settings.send_lease):
        return "not-claimed"
    note = session.get_one(Notification, note_id)
    sub = session.get_one(Subscription, note.subscription_id)
    if sub.status is not VALID_FOR.get(note.kind) or not may_send(
        session, sub.subscriber.email, note.kind
    ):
        note.status = NoticeStatus.SKIPPED
        session.commit()
        return note.status
    sub, data, message_id = build_notice(session, settings, renderer, note)
    nl = session.get_one(Newsletter, sub.newsletter_id)
    # A per-notice envelope sender (VERP) so a bounce names this row; DKIM last.
    sender = return_paths(settings).for_notice(note.id, nl.sender)
    data = sign_if_configured(settings, data)
    try:
        conn = opener() if opener else connect(settings.smtp, settings.smtp_timeout)
        try:
            reply = send(conn, sender, sub.subscriber.email, data)
        finally:
            close(conn)
    except ConnectionLost as exc:
        _release(session, note, f"connection: {exc}")
        raise TemporaryFailure(str(exc)) from exc
    return _record(session, note, reply, message_id)


def _release(session: Session, note: Notification, error: str) -> None:
    note.status = NoticeStatus.QUEUED
    note.last_error = error
    session.commit()


def _record(session: Session, note: Notification, reply: Reply, message_id: str) -> str:
    if reply.ok:
        note.status, note.message_id, note.sent_at = NoticeStatus.SENT, message_id, utcnow()
        note.last_error = None
        reset_soft_bounces(session, [note.subscription_id])
    elif reply.temporary:
        _release(session, note, f"{reply.code} {reply.text}")
        raise TemporaryFailure(f"{reply.code} {reply.text}")
    else:
        note.status, note.last_error = NoticeStatus.FAILED, f"{reply.code} {reply.text}"
        if reply.condemns_address:
            bounce_at_send(session, note.subscription_id, note.last_error)
    session.commit()
    return note.status


def due_notices(session: Session, older_than: int, max_attempts: int) -> list[int]:
    """Notices whose task seems lost: queued a while ago, or stuck sending past the lease."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return list(
        session.scalars(
            select(Notification.id).where(
                Notification.status.in_((NoticeStatus.QUEUED, NoticeStatus.SENDING)),
                Notification.created_at < cutoff,
                Notification.attempts < max_attempts,
            )
        )
    )
