"""What a verdict on an address (an SMTP 550, a bounce report) leaves behind, in a form
two runs can be compared by."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.models import Delivery, DeliveryStatus, Status, SubscriptionEvent
from mailer.readers import newsletters, suppressions
from mailer.readers import subscriptions as subs

OTHER_SENDER = "Other News <other@example.org>"


def on_two_newsletters(session: Session, email: str) -> None:
    """The reader is also on a second newsletter, which the verdict must end too."""
    newsletters.create_newsletter(session, "other", "Other News", OTHER_SENDER)
    subs.subscribe(session, email=email, newsletter="other", confirmed=True, source="import")
    session.commit()


@dataclass(frozen=True)
class AddressState:
    subscriptions: list[tuple[str, Status]]  # (newsletter slug, status)
    suppression: str | None  # the entry's reason
    events: list[tuple[str, str | None, str]]  # (newsletter slug, old status, new status)
    deliveries: list[tuple[DeliveryStatus, int | None]]  # (status, SMTP code)
    sources: set[str]  # who recorded the ending: says which channel, not what happened


def address_state(session: Session, email: str) -> AddressState:
    session.expire_all()
    subscriber = subs.subscriber_by_email(session, email)
    assert subscriber is not None
    by_id = {s.id: s.newsletter.slug for s in subscriber.subscriptions}
    events = session.scalars(
        select(SubscriptionEvent)
        .where(SubscriptionEvent.subscription_id.in_(by_id))
        .order_by(SubscriptionEvent.id)
    ).all()
    entry = suppressions.entry_for(session, email)
    return AddressState(
        subscriptions=sorted(
            (slug, s.status) for s in subscriber.subscriptions for slug in [by_id[s.id]]
        ),
        suppression=entry.reason if entry else None,
        events=sorted(
            ((by_id[e.subscription_id], e.old_status, e.new_status) for e in events),
            key=lambda e: (e[0], e[1] or "", e[2]),
        ),
        deliveries=[
            (d.status, d.smtp_code)
            for d in session.scalars(
                select(Delivery).where(Delivery.subscription_id.in_(by_id)).order_by(Delivery.id)
            )
        ],
        sources={e.source for e in events if e.old_status is not None},
    )
