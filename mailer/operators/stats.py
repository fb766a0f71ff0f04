"""Per-newsletter numbers: readers, growth, and how each recent edition went."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Status,
    Subscription,
    SubscriptionEvent,
    utcnow,
)
from mailer.operators.newsletters import list_newsletters, newsletter


class EditionStats(BaseModel):
    id: int
    frequency: Frequency
    window_end: datetime
    status: str
    counts: dict[str, int]
    bounce_rate: float | None


class NewsletterStats(BaseModel):
    newsletter: str
    name: str
    paused: bool
    by_status: dict[str, int]
    new_active_7d: int
    new_active_30d: int
    editions: list[EditionStats] = []


@dataclass
class _Growth:
    week: int = 0
    month: int = 0


def bounce_rate(counts: dict[str, int]) -> float | None:
    """Hard failures over everything the server answered for (sent + failed)."""
    answered = counts.get("sent", 0) + counts.get("failed", 0)
    return counts.get("failed", 0) / answered if answered else None


def stats(
    session: Session, slug: str | None = None, *, editions: int = 5, now: datetime | None = None
) -> list[NewsletterStats]:
    """Readers by status, growth from the audit table, and the last editions' outcomes.

    Growth counts subscriptions that became active within the window and are
    still active, read from the consent/audit events rather than created_at,
    so an import of old readers and a re-subscribe both count when they happen.
    """
    now = now or utcnow()
    nls = [newsletter(session, slug)] if slug is not None else list(list_newsletters(session))
    ids = [nl.id for nl in nls]
    by_status: dict[int, dict[str, int]] = defaultdict(dict)
    for nl_id, status, n in session.execute(
        select(Subscription.newsletter_id, Subscription.status, func.count())
        .where(Subscription.newsletter_id.in_(ids))
        .group_by(Subscription.newsletter_id, Subscription.status)
    ):
        by_status[nl_id][Status(status).value] = n
    growth: dict[int, _Growth] = defaultdict(_Growth)
    month_ago, week_ago = now - timedelta(days=30), now - timedelta(days=7)
    became_active = (
        select(
            Subscription.newsletter_id,
            SubscriptionEvent.subscription_id,
            func.max(SubscriptionEvent.at).label("at"),
        )
        .join(Subscription, Subscription.id == SubscriptionEvent.subscription_id)
        .where(
            Subscription.newsletter_id.in_(ids),
            Subscription.status == Status.ACTIVE,
            SubscriptionEvent.new_status == Status.ACTIVE.value,
            func.coalesce(SubscriptionEvent.old_status, "") != Status.ACTIVE.value,
            SubscriptionEvent.at >= month_ago,
        )
        .group_by(Subscription.newsletter_id, SubscriptionEvent.subscription_id)
    )
    for nl_id, _sub_id, at in session.execute(became_active):
        growth[nl_id].month += 1
        if at >= week_ago:
            growth[nl_id].week += 1
    out = []
    for nl in nls:
        recent = session.scalars(
            select(Digest)
            .where(Digest.newsletter_id == nl.id)
            .order_by(Digest.window_end.desc(), Digest.id.desc())
            .limit(editions)
        ).all()
        live: dict[int, dict[str, int]] = defaultdict(dict)
        if recent:
            for digest_id, state, n in session.execute(
                select(Delivery.digest_id, Delivery.status, func.count())
                .where(Delivery.digest_id.in_([d.id for d in recent]))
                .group_by(Delivery.digest_id, Delivery.status)
            ):
                live[digest_id][DeliveryStatus(state).value] = n
        out.append(
            NewsletterStats(
                newsletter=nl.slug,
                name=nl.name,
                paused=nl.paused,
                by_status={s.value: by_status[nl.id].get(s.value, 0) for s in Status},
                new_active_7d=growth[nl.id].week,
                new_active_30d=growth[nl.id].month,
                editions=[
                    EditionStats(
                        id=d.id,
                        frequency=d.frequency,
                        window_end=d.window_end,
                        status=d.status,
                        counts=live[d.id] or dict(d.counts or {}),
                        bounce_rate=bounce_rate(live[d.id] or dict(d.counts or {})),
                    )
                    for d in recent
                ],
            )
        )
    return out
