"""The suppression list: addresses never to be mailed, and the ways off it.

An address is kept only as a hash (`addresses.address_hash`), so an erased
reader leaves nothing readable behind. While the address's subscriber row
still exists the entry points at it (`Suppression.subscriber_id`, set to
NULL by the database when the row is erased): that is the only way an
operator's list can show the address, and only while we hold it anyway.

Why an address is suppressed decides how it comes off:

- it asked us to stop and was then erased (`UNSUBSCRIBED_THEN_ERASED`): the
  owner's own fresh double opt-in lifts it. A subscribe request for it is
  answered like any other and the confirmation mail goes out (one mail, the
  one the form asked for, at most once per `MAILER_CONFIRM_RESEND_INTERVAL`,
  as for any address); pressing its button lifts the entry. Nothing else is
  mailed to it before that, and an operator's import never lifts it.
- it bounced, or its owner reported our mail as spam (`complaint`,
  `complained-then-erased`, `hard-bounce`, `soft-bounce-limit`, an
  operator's own): only an operator lifts it (`mailer suppression lift`,
  `DELETE /api/suppressions/{address}`). A confirmation to a complainer is
  more mail they said was unwanted, and to a dead mailbox it is another
  bounce against our reputation.

Every lift is written to `suppression_event`: when, by whom, from which
address (IP), and what the entry had said. Erasing the reader erases those
records too (they hold the IP they confirmed from).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailer.db import among, is_postgres
from mailer.models import Subscriber, Suppression, SuppressionEvent, utcnow
from mailer.readers.addresses import address_hash, address_key

UNSUBSCRIBED_THEN_ERASED = "unsubscribed-then-erased"
COMPLAINED_THEN_ERASED = "complained-then-erased"
# Entries the address owner's confirmed opt-in lifts; every other reason needs an operator.
LIFTED_BY_OPT_IN = frozenset({UNSUBSCRIBED_THEN_ERASED})
# Who lifted an entry, as the audit row says.
BY_OPT_IN = "double-opt-in"
BY_OPERATOR = "operator"

_HASH = re.compile(r"[0-9a-f]{64}")


def lifted_by_opt_in(entry: Suppression | None) -> bool:
    return entry is not None and entry.reason in LIFTED_BY_OPT_IN


def _by_hash(session: Session, digest: str) -> Suppression | None:
    return session.scalar(select(Suppression).where(Suppression.address_hash == digest))


def entry_for(session: Session, email: str) -> Suppression | None:
    return _by_hash(session, address_hash(email))


def is_suppressed(session: Session, email: str) -> bool:
    return entry_for(session, email) is not None


def suppressed(session: Session, hashes: Iterable[str]) -> set[str]:
    """Which of these address hashes are suppressed: one query on PostgreSQL (an
    array parameter), 1,000 at a time elsewhere (SQLite's parameter limit).

    The one rule for a batch; `suppressed_among_sql` is the same test spelt as SQL
    for a statement that must do it inside one round trip."""
    wanted = list(set(hashes))
    postgres = is_postgres(session)
    step = len(wanted) if postgres else 1000
    found: set[str] = set()
    for i in range(0, len(wanted), max(1, step)):
        found.update(
            session.scalars(
                select(Suppression.address_hash).where(
                    among(Suppression.address_hash, wanted[i : i + step], postgres)
                )
            )
        )
    return found


def suppressed_among_sql(hashes: str) -> str:
    """`suppressed` as a PostgreSQL subquery yielding the suppressed hashes (column `h`)
    among the text array expression `hashes`: for the importer's single-statement
    write of a chunk, where a separate lookup would cost a round trip per chunk."""
    return f"SELECT address_hash AS h FROM suppression WHERE address_hash = ANY({hashes})"


def may_send(session: Session, email: str, kind: str) -> bool:
    """Whether a transactional mail of `kind` may go to the address: not when it is
    suppressed, except the confirmation of an opt-in that lifts its entry."""
    entry = entry_for(session, email)
    return entry is None or (kind == "confirm" and lifted_by_opt_in(entry))


def _subscriber_id(session: Session, email: str) -> int | None:
    return session.scalar(select(Subscriber.id).where(Subscriber.email_key == address_key(email)))


def suppress(session: Session, email: str, reason: str, source: str | None = None) -> None:
    """Put the address on the list. An entry its owner could lift by opting in again
    gives way to a stronger reason (a bounce, a complaint) that comes later."""
    entry = entry_for(session, email)
    if entry is None:
        session.add(
            Suppression(
                address_hash=address_hash(email),
                reason=reason,
                source=source,
                subscriber_id=_subscriber_id(session, email),
            )
        )
    elif lifted_by_opt_in(entry) and reason not in LIFTED_BY_OPT_IN:
        entry.reason, entry.source = reason, source
    else:
        return
    session.flush()


def remember_address(session: Session, entry: Suppression, subscriber_id: int) -> None:
    """The address is held again (its owner subscribed anew): the list may show it."""
    if entry.subscriber_id is None:
        entry.subscriber_id = subscriber_id
        session.flush()


def find(session: Session, ref: str) -> Suppression | None:
    """The entry for an address, or for a hash as `list` shows it (64 hex digits)."""
    ref = ref.strip()
    return _by_hash(session, ref.lower() if _HASH.fullmatch(ref.lower()) else address_hash(ref))


def lift(
    session: Session,
    entry: Suppression,
    *,
    by: str,
    ip: str | None = None,
    detail: str | None = None,
    now: datetime | None = None,
) -> SuppressionEvent:
    """Take the entry off the list, on record."""
    event = SuppressionEvent(
        address_hash=entry.address_hash,
        reason=entry.reason,
        source=entry.source,
        suppressed_at=entry.created_at,
        at=now or utcnow(),
        lifted_by=by,
        ip=ip,
        detail=detail,
    )
    session.add(event)
    session.delete(entry)
    session.flush()
    return event


def lift_by_opt_in(
    session: Session, email: str, *, ip: str | None, now: datetime | None = None
) -> SuppressionEvent | None:
    """The owner confirmed a fresh opt-in: an entry that allows it is lifted."""
    entry = entry_for(session, email)
    if not lifted_by_opt_in(entry):
        return None
    assert entry is not None
    return lift(session, entry, by=BY_OPT_IN, ip=ip, detail="confirmed a new subscription", now=now)


def forget_lifts(session: Session, email: str) -> None:
    """Erasure: the record of the address's lifts goes with the reader (it holds the IP
    they confirmed from); an entry kept because they had asked to stop stays."""
    session.execute(
        delete(SuppressionEvent).where(SuppressionEvent.address_hash == address_hash(email))
    )
