"""What a bounce or complaint changes: the one place a report acts on the store.

Hard bounces (5.x.x) and complaints suppress the address (through
`readers.subscriptions.end_address`, the one hard-bounce rule); soft bounces
(4.x.x) count on the subscription and suppress at MAILER_SOFT_BOUNCE_LIMIT in
a row. A successful send resets that count (`readers.subscriptions.
reset_soft_bounces`). An authenticated webhook may also say "this address
bounced" as JSON (`handle_event`).

Anything we can't read or can't trust (not a report, a success notice, a
forged or foreign return path, an unknown delivery) is an `Outcome` with
applied=False and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session

from mailer.bounces.reports import (
    SMTP_CODE_RE,
    STATUS_RE,
    NotAReport,
    Report,
    Severity,
    parse_report,
)
from mailer.mail.verp import ForgedReturnPath, ReturnPaths, VerpTag
from mailer.models import (
    Delivery,
    DeliveryStatus,
    NoticeStatus,
    Notification,
    Status,
    Subscriber,
    Subscription,
    utcnow,
)
from mailer.readers.subscriptions import end_address, subscriber_by_email

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a report did; applied=False means nothing in the database changed."""

    result: str
    reason: str
    applied: bool = False
    delivery_id: int | None = None
    notification_id: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "result": self.result,
            "reason": self.reason,
            "applied": self.applied,
            "delivery_id": self.delivery_id,
            "notification_id": self.notification_id,
        }


def ignored(result: str, reason: str) -> Outcome:
    return Outcome(result=result, reason=reason, applied=False)


@dataclass(frozen=True)
class BounceEvent:
    """A report from an authenticated source (the webhook's JSON): no VERP needed."""

    type: Literal["bounce", "complaint"]
    email: str
    status: str | None = None
    diagnostic: str | None = None

    def severity(self) -> Severity:
        if self.type == "complaint":
            return "complaint"
        if self.status is None:
            return "hard"
        match = STATUS_RE.fullmatch(self.status.strip())
        if match is None or match.group(1) == "2":
            raise ValueError(f"status must be a 4.x.x or 5.x.x code, got {self.status!r}")
        return "hard" if match.group(1) == "5" else "soft"


def _verified_tag(paths: Sequence[str], verp: ReturnPaths) -> VerpTag | Outcome:
    forged: str | None = None
    for address in paths:
        try:
            tag = verp.parse(address)
        except ForgedReturnPath as exc:
            forged = str(exc)
            continue
        if tag is not None:
            return tag
    if forged:
        return ignored("forged", forged)
    return ignored("no-return-path", "the report names no return path of ours; nothing changed")


def handle_raw(
    session: Session,
    verp: ReturnPaths,
    raw: bytes,
    *,
    soft_limit: int = 3,
    now: datetime | None = None,
) -> Outcome:
    """Read one report and act on it if it is genuine. Flushes; the caller commits."""
    try:
        report = parse_report(raw)
    except NotAReport as exc:
        return ignored("not-a-report", str(exc))
    tag = _verified_tag(report.return_paths, verp)
    if isinstance(tag, Outcome):
        return tag
    return apply_tagged(session, tag, report, soft_limit=soft_limit, now=now)


def apply_tagged(
    session: Session,
    tag: VerpTag,
    report: Report,
    *,
    soft_limit: int = 3,
    now: datetime | None = None,
) -> Outcome:
    """Apply a verified report to the message its return path names."""
    delivery: Delivery | None = None
    note: Notification | None = None
    if tag.kind == "d":
        delivery = session.get(Delivery, tag.id)
        if delivery is None:
            return ignored("unknown-delivery", f"no delivery {tag.id}; nothing changed")
        sub = session.get(Subscription, delivery.subscription_id)
    else:
        note = session.get(Notification, tag.id)
        if note is None:
            return ignored("unknown-notice", f"no notification {tag.id}; nothing changed")
        sub = session.get(Subscription, note.subscription_id)
    if sub is None:  # deleted since (erasure): nothing left to protect
        return ignored("unknown-subscription", "the subscription is gone; nothing changed")
    outcome = _apply(
        session,
        sub.subscriber,
        [sub],
        report.severity,
        report.status,
        report.diagnostic,
        soft_limit=soft_limit,
        now=now or utcnow(),
    )
    if outcome.result in ("hard-bounce", "soft-bounce-limit"):
        _mark_failed(delivery, note, report, now or utcnow())
    return Outcome(
        outcome.result,
        outcome.reason,
        outcome.applied,
        delivery_id=delivery.id if delivery else None,
        notification_id=note.id if note else None,
    )


def handle_event(
    session: Session, event: BounceEvent, *, soft_limit: int = 3, now: datetime | None = None
) -> Outcome:
    """Apply a report about an address from a trusted source. Flushes; the caller commits."""
    severity = event.severity()
    subscriber = subscriber_by_email(session, event.email)
    if subscriber is None or not subscriber.subscriptions:
        return ignored("unknown-address", "no subscriber has that address; nothing changed")
    return _apply(
        session,
        subscriber,
        list(subscriber.subscriptions),
        severity,
        event.status,
        event.diagnostic,
        soft_limit=soft_limit,
        now=now or utcnow(),
    )


def _detail(status: str | None, diagnostic: str | None) -> str:
    return " ".join(x for x in (status, diagnostic) if x)[:2000] or "no diagnostic"


def _apply(
    session: Session,
    subscriber: Subscriber,
    counted: list[Subscription],
    severity: Severity,
    status: str | None,
    diagnostic: str | None,
    *,
    soft_limit: int,
    now: datetime,
) -> Outcome:
    """Soft bounces count on the subscriptions the report is about (`counted`);
    suppression is per address, so ending one ends all of the address's
    subscriptions (`subscriptions.end_address`)."""
    detail = _detail(status, diagnostic)
    if severity == "soft":
        worst = 0
        for sub in counted:
            sub.soft_bounces = (sub.soft_bounces or 0) + 1
            worst = max(worst, sub.soft_bounces)
        if worst < soft_limit:
            session.flush()
            return Outcome("soft-bounce", f"soft bounce {worst} of {soft_limit}: {detail}", True)
        reason = f"soft-bounce-limit ({worst} in a row): {detail}"
        end_address(
            session,
            subscriber,
            Status.BOUNCED,
            reason="soft-bounce-limit",
            source="bounce",
            detail=reason,
            now=now,
        )
        return Outcome("soft-bounce-limit", reason, True)
    if severity == "hard":
        end_address(
            session,
            subscriber,
            Status.BOUNCED,
            reason="hard-bounce",
            source="bounce",
            detail=detail,
            now=now,
        )
        return Outcome("hard-bounce", f"address suppressed: {detail}", True)
    end_address(
        session,
        subscriber,
        Status.COMPLAINED,
        reason="complaint",
        source="complaint",
        detail=detail,
        now=now,
    )
    return Outcome("complaint", f"address suppressed: {detail}", True)


def _mark_failed(
    delivery: Delivery | None, note: Notification | None, report: Report, now: datetime
) -> None:
    text = _detail(report.status, report.diagnostic)
    if delivery is not None:
        code = SMTP_CODE_RE.search(report.diagnostic or "")
        delivery.status = DeliveryStatus.FAILED
        delivery.smtp_code = int(code.group(1)) if code else None
        delivery.smtp_reply = text
        delivery.updated_at = now
    if note is not None:
        note.status = NoticeStatus.FAILED
        note.last_error = text
