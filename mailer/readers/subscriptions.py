"""Subscribe, confirm, unsubscribe, preferences: the reader's side of the store.

What a reader subscribes to (newsletters, topics, frequencies, the `Offer`)
is `readers.newsletters`; this module is the reader's journey through it.

Every status change goes through `change_status`, which refuses transitions
the lifecycle does not allow and writes the audit row that is our consent
record. Functions here flush but never commit: the caller owns the unit of
work, and enqueues any mail only after its commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.db import among, is_postgres
from mailer.mail.tokens import Purpose, TokenError, Tokens
from mailer.models import (
    Frequency,
    Newsletter,
    Notification,
    Status,
    Subscriber,
    Subscription,
    SubscriptionEvent,
    Topic,
    utcnow,
)
from mailer.readers import newsletters, suppressions
from mailer.readers.addresses import Address, InvalidAddress, address_key, normalise

# The suppression rules live in mailer.readers.suppressions; these two are used from here too.
from mailer.readers.suppressions import suppress


class InvalidTransition(newsletters.SubscriptionError):
    pass


# Which status may follow which. Anything else is a bug or an attack.
TRANSITIONS: dict[Status | None, set[Status]] = {
    None: {Status.PENDING, Status.ACTIVE},
    Status.PENDING: {Status.ACTIVE, Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED},
    Status.ACTIVE: {Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED},
    Status.UNSUBSCRIBED: {Status.PENDING, Status.ACTIVE},
    Status.BOUNCED: {Status.PENDING, Status.ACTIVE, Status.UNSUBSCRIBED},
    Status.COMPLAINED: {Status.PENDING, Status.UNSUBSCRIBED},
}

# -- status changes -------------------------------------------------------------


def change_status(
    session: Session,
    sub: Subscription,
    new: Status,
    *,
    source: str,
    ip: str | None = None,
    detail: str | None = None,
    now: datetime | None = None,
) -> None:
    old: Status | None = sub.status
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"A subscription cannot go from {old} to {new}.")
    now = now or utcnow()
    sub.status = new
    sub.status_changed_at = now
    if sub.id is None:
        session.add(sub)
        session.flush()
    session.add(
        SubscriptionEvent(
            subscription_id=sub.id,
            old_status=old.value if old else None,
            new_status=new.value,
            at=now,
            source=source,
            ip=ip,
            detail=detail,
        )
    )


def end_address(
    session: Session,
    subscriber: Subscriber,
    new: Status,
    *,
    reason: str,
    source: str,
    detail: str,
    now: datetime | None = None,
) -> None:
    """A verdict on an address (a 550 at send time, a bounce report, a complaint) is
    about the address, not one newsletter: it goes on the suppression list and every
    subscription of it ends, or their statuses would claim mail still goes. The one
    place both the SMTP reply and the bounce report take this, so they leave the same
    state; `source` only says which of them it was."""
    suppress(session, subscriber.email, reason, source=source)
    for sub in subscriber.subscriptions:
        if sub.status is not new and new in TRANSITIONS[sub.status]:
            change_status(session, sub, new, source=source, detail=detail, now=now)
    session.flush()


def bounce_at_send(session: Session, subscription_id: int, reply: str) -> None:
    """A server refused the address while we sent to it (`Reply.condemns_address`): a
    digest or a notice, the same verdict as a bounce report, never mailed again."""
    sub = session.get_one(Subscription, subscription_id)
    session.refresh(sub)  # its status as it is now, not as the claim read it
    end_address(
        session,
        sub.subscriber,
        Status.BOUNCED,
        reason="hard-bounce",
        source="smtp-bounce",
        detail=reply,
    )


# -- the reader's journey ----------------------------------------------------------


@dataclass
class SubscribeOutcome:
    """What happened; the web answer is the same whatever this says."""

    state: str
    subscription_id: int | None = None
    notification_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CheckedRequest:
    address: Address
    topics: list[str]  # slugs
    frequency: Frequency


def check_request(
    offer: newsletters.Offer,
    *,
    email: str,
    topics: Sequence[str] = (),
    frequency: str | None = None,
    check_deliverability: bool = False,
) -> CheckedRequest:
    """Everything about a subscribe request that can be judged without knowing the reader.

    The web answers from this alone, so its reply and timing reveal nothing
    about whether the address is already subscribed.
    """
    try:
        address = normalise(email, check_deliverability=check_deliverability)
    except InvalidAddress as exc:
        raise newsletters.SubscriptionError(str(exc), field="email") from exc
    slugs = newsletters.pick_topics(offer.topic_slugs, topics, offer.name)
    return CheckedRequest(address, slugs, newsletters.parse_frequency(frequency, offer))


@dataclass
class ValidRequest:
    newsletter: Newsletter
    address: Address
    topics: list[Topic]
    frequency: Frequency


def validate_request(
    session: Session,
    *,
    email: str,
    newsletter: str,
    topics: Sequence[str] = (),
    frequency: str | None = None,
    check_deliverability: bool = False,
) -> ValidRequest:
    """`check_request` against the database as it is now, with the ORM objects."""
    nl = newsletters.open_newsletter(session, newsletter)
    known = newsletters.topics_of(session, nl)
    checked = check_request(
        newsletters.offer_from(nl, known),
        email=email,
        topics=topics,
        frequency=frequency,
        check_deliverability=check_deliverability,
    )
    by_slug = {t.slug: t for t in known}
    return ValidRequest(
        nl, checked.address, [by_slug[s] for s in checked.topics], checked.frequency
    )


def _get_or_create_subscriber(session: Session, email: str, key: str) -> Subscriber:
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email_key == key))
    if subscriber is not None:
        return subscriber
    try:
        with session.begin_nested():
            subscriber = Subscriber(email=email, email_key=key)
            session.add(subscriber)
    except IntegrityError:
        # A concurrent request created it first; use theirs.
        subscriber = session.scalars(select(Subscriber).where(Subscriber.email_key == key)).one()
    return subscriber


def _queue(session: Session, sub: Subscription, kind: str) -> Notification:
    note = Notification(subscription_id=sub.id, kind=kind)
    session.add(note)
    session.flush()
    return note


def subscribe(
    session: Session,
    *,
    email: str,
    newsletter: str,
    topics: Sequence[str] = (),
    frequency: str | None = None,
    source: str = "web",
    ip: str | None = None,
    confirmed: bool = False,
    check_deliverability: bool = False,
    resend_interval: int = 600,
    now: datetime | None = None,
) -> SubscribeOutcome:
    """Start (or restart) a subscription; `confirmed` is for operators' imports only."""
    now = now or utcnow()
    request = validate_request(
        session,
        email=email,
        newsletter=newsletter,
        topics=topics,
        frequency=frequency,
        check_deliverability=check_deliverability,
    )
    nl, address, chosen, freq = (
        request.newsletter,
        request.address,
        request.topics,
        request.frequency,
    )
    blocked = suppressions.entry_for(session, address.email)
    if blocked is not None and (confirmed or not suppressions.lifted_by_opt_in(blocked)):
        # An operator's import never lifts an entry; a bounce or complaint needs an operator.
        return SubscribeOutcome("suppressed")

    subscriber = _get_or_create_subscriber(session, address.email, address.key)
    if blocked is not None:
        # Its owner may lift it by confirming: the confirmation goes out as for anyone.
        suppressions.remember_address(session, blocked, subscriber.id)
    sub = session.scalar(
        select(Subscription).where(
            Subscription.subscriber_id == subscriber.id, Subscription.newsletter_id == nl.id
        )
    )
    target = Status.ACTIVE if confirmed else Status.PENDING

    if sub is None:
        sub = Subscription(
            subscriber_id=subscriber.id,
            newsletter_id=nl.id,
            frequency=freq,
            generation=1,
            created_at=now,
        )
        return _start(session, sub, chosen, freq, target, source, ip, now, state="new")

    if sub.status is Status.ACTIVE:
        return SubscribeOutcome("already-active", sub.id)

    if sub.status is Status.PENDING:
        if confirmed:
            return _start(session, sub, chosen, freq, target, source, ip, now, state="confirmed")
        sub.frequency = freq
        sub.topics = chosen
        if _confirm_sent_within(session, sub, now, resend_interval):
            return SubscribeOutcome("pending-recently-sent", sub.id)
        return SubscribeOutcome("pending-resent", sub.id, [_queue(session, sub, "confirm").id])

    # unsubscribed, bounced or complained: a fresh opt-in with a new generation of tokens,
    # but never a confirmation sooner than the interval allows on any path. "Unsubscribe"
    # pressed in the confirmation itself stands: resubmitting the address at once changes
    # nothing and mails nobody.
    if not confirmed and _confirm_sent_within(session, sub, now, resend_interval):
        return SubscribeOutcome("ended-recently-sent", sub.id)
    sub.generation += 1
    return _start(session, sub, chosen, freq, target, source, ip, now, state="restarted")


def _confirm_sent_within(session: Session, sub: Subscription, now: datetime, interval: int) -> bool:
    """Whether a confirmation for this subscription was queued less than `interval`
    seconds ago: the one rule for how often the subscribe form can mail an address."""
    last = session.scalar(
        select(func.max(Notification.created_at)).where(
            Notification.subscription_id == sub.id, Notification.kind == "confirm"
        )
    )
    return last is not None and now - last < timedelta(seconds=interval)


def _start(
    session: Session,
    sub: Subscription,
    topics: list[Topic],
    freq: Frequency,
    target: Status,
    source: str,
    ip: str | None,
    now: datetime,
    *,
    state: str,
) -> SubscribeOutcome:
    sub.frequency = freq
    sub.soft_bounces = 0
    change_status(session, sub, target, source=source, ip=ip, now=now)
    sub.topics = topics
    if target is Status.ACTIVE:
        sub.confirmed_at = now
        sub.consent_at, sub.consent_source, sub.consent_ip = now, source, ip
        session.flush()
        return SubscribeOutcome(state, sub.id)
    sub.confirmed_at = None
    session.flush()
    return SubscribeOutcome(state, sub.id, [_queue(session, sub, "confirm").id])


def subscription_for_token(
    session: Session, tokens: Tokens, purpose: Purpose, token: str
) -> Subscription:
    """The subscription a link names; raises TokenError for every kind of bad link."""
    data = tokens.read(purpose, token)
    sub = session.get(Subscription, data.subscription_id)
    if sub is None or sub.generation != data.generation:
        raise TokenError("This link is no longer valid.")
    return sub


@dataclass
class ConfirmOutcome:
    subscription: Subscription
    changed: bool
    notification_ids: list[int] = field(default_factory=list)


def confirm(
    session: Session,
    tokens: Tokens,
    token: str,
    *,
    ip: str | None = None,
    now: datetime | None = None,
) -> ConfirmOutcome:
    now = now or utcnow()
    sub = subscription_for_token(session, tokens, Purpose.CONFIRM, token)
    if sub.status is Status.ACTIVE:
        return ConfirmOutcome(sub, changed=False)
    if sub.status is not Status.PENDING:
        raise TokenError("This subscription has ended; please subscribe again.")
    if sub.newsletter.archived_at is not None:
        raise TokenError(newsletters.closed_message(sub.newsletter))
    change_status(session, sub, Status.ACTIVE, source="confirm-link", ip=ip, now=now)
    sub.confirmed_at = now
    sub.consent_at, sub.consent_source, sub.consent_ip = now, "double-opt-in", ip
    # The owner asked for mail again: an entry left by their earlier "stop" comes off.
    suppressions.lift_by_opt_in(session, sub.subscriber.email, ip=ip, now=now)
    session.flush()
    return ConfirmOutcome(sub, changed=True, notification_ids=[_queue(session, sub, "welcome").id])


def unsubscribe(
    session: Session,
    tokens: Tokens,
    token: str,
    *,
    source: str = "unsubscribe-link",
    ip: str | None = None,
    now: datetime | None = None,
) -> tuple[Subscription, bool]:
    """Unsubscribe the link's subscription; (subscription, whether anything changed)."""
    sub = subscription_for_token(session, tokens, Purpose.UNSUBSCRIBE, token)
    if sub.status is Status.UNSUBSCRIBED:
        return sub, False
    change_status(session, sub, Status.UNSUBSCRIBED, source=source, ip=ip, now=now)
    session.flush()
    return sub, True


def update_preferences(
    session: Session,
    tokens: Tokens,
    token: str,
    *,
    topics: Sequence[str],
    frequency: str | None,
    ip: str | None = None,
) -> Subscription:
    sub = subscription_for_token(session, tokens, Purpose.PREFERENCES, token)
    if sub.status not in (Status.ACTIVE, Status.PENDING):
        raise newsletters.SubscriptionError(
            "This subscription has ended; subscribe again to choose topics."
        )
    nl = session.get_one(Newsletter, sub.newsletter_id)
    chosen = newsletters.resolve_topics(session, nl, topics)
    sub.frequency = newsletters.parse_frequency(frequency, nl)
    sub.topics = chosen
    session.add(
        SubscriptionEvent(
            subscription_id=sub.id,
            old_status=sub.status.value,
            new_status=sub.status.value,
            source="preferences",
            ip=ip,
            detail=f"frequency={sub.frequency}; topics={','.join(t.slug for t in chosen) or '*'}",
        )
    )
    session.flush()
    return sub


def purge_pending(session: Session, older_than: timedelta, now: datetime | None = None) -> int:
    """Forget subscriptions never confirmed, and subscribers left with none."""
    cutoff = (now or utcnow()) - older_than
    ids = session.scalars(
        select(Subscription.id).where(
            Subscription.status == Status.PENDING, Subscription.status_changed_at < cutoff
        )
    ).all()
    if not ids:
        return 0
    session.execute(delete(Subscription).where(Subscription.id.in_(ids)))
    orphans = select(Subscriber.id).where(
        ~select(Subscription.id).where(Subscription.subscriber_id == Subscriber.id).exists()
    )
    session.execute(delete(Subscriber).where(Subscriber.id.in_(orphans)))
    session.flush()
    return len(ids)


def subscriber_by_email(session: Session, email: str) -> Subscriber | None:
    return session.scalar(
        select(Subscriber).where(Subscriber.email_key == address_key(email.strip()))
    )


def reset_soft_bounces(session: Session, subscription_ids: Iterable[int]) -> None:
    """Call when the server accepted a message: soft bounces only count in a row.

    One UPDATE for a whole batch, touching only rows that have a count, so
    the common case writes nothing.
    """
    ids = list(subscription_ids)
    if ids:
        session.execute(
            update(Subscription)
            .where(among(Subscription.id, ids, is_postgres(session)), Subscription.soft_bounces > 0)
            .values(soft_bounces=0)
        )
