"""Status writes: every reply recorded, the in-flight claim, the libpq writer that carries both.

Replies drive the state machine: 2xx `sent`; 4xx `deferred` with an
exponential `next_attempt_at` until the attempts run out; 5xx `failed`, and a
550-class reply also suppresses the address and ends every subscription of it
as bounced, as a bounce report would (`subscriptions.end_address`). A row is
only written while still ours (same lease, still sending).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    literal,
    null,
    or_,
    update,
)
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.db import async_commit_engine, prepare
from mailer.mail.transport import Reply
from mailer.models import DeliveryStatus
from mailer.readers.subscriptions import bounce_at_send
from mailer.sending.claims import DELIVERY, Claimed, claimable

log = logging.getLogger(__name__)


MAX_BACKOFF = timedelta(hours=12)


def backoff(attempts: int, base: int) -> timedelta:
    """Wait before attempt `attempts + 1`: base, 2×base, 4×base… capped at 12 hours."""
    return min(timedelta(seconds=base * 2 ** max(0, attempts - 1)), MAX_BACKOFF)


def _ours(delivery_id: int, lease_until: datetime) -> Any:
    """Only touch a row we still hold: same lease, still sending."""
    c = DELIVERY.c
    return and_(
        c.id == delivery_id,
        c.status == DeliveryStatus.SENDING,
        c.lease_until == lease_until,
    )


# -- recording replies ----------------------------------------------------------------------


@dataclass
class BatchResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    bounced: int = 0
    lost_lease: int = 0
    not_ours: int = 0  # claimed by another sender first, or cancelled, before their turn
    replies: list[tuple[int, int]] = field(default_factory=list)


def record(
    session: Session,
    settings: Settings,
    digest_id: int,
    row: Claimed,
    lease_until: datetime,
    reply: Reply,
    message_id: str,
    result: BatchResult,
    now: datetime,
) -> None:
    """Move the row on by the server's reply (flushes; the caller commits). A verdict we
    reached ourselves (`reply.local`) is recorded as ours: no SMTP code, never a bounce."""
    text = (reply.text if reply.local else f"{reply.code} {reply.text}")[:2000]
    values: dict[str, Any] = {
        "smtp_code": None if reply.local else reply.code,
        "smtp_reply": text,
        "message_id": message_id,
        "lease_until": None,
        "updated_at": now,
    }
    if reply.ok:
        values |= {"status": DeliveryStatus.SENT, "sent_at": now, "next_attempt_at": None}
        result.sent += 1
    elif reply.temporary and row.attempts < settings.send_max_attempts:
        values |= {
            "status": DeliveryStatus.DEFERRED,
            "next_attempt_at": now + backoff(row.attempts, settings.send_retry_base),
        }
        result.deferred += 1
    else:
        # Given up: its articles are no longer reserved for the reader.
        values |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None, "released": True}
        result.failed += 1
    changed = session.execute(
        update(DELIVERY).where(_ours(row.delivery_id, lease_until)).values(**values)
    ).rowcount  # type: ignore[attr-defined]
    if not changed:
        # Our lease ran out and someone else owns the row now; theirs is the record.
        result.lost_lease += 1
        log.warning("delivery %s: lease lost before the reply was recorded", row.delivery_id)
        return
    result.replies.append((row.delivery_id, reply.code))
    if values["status"] is DeliveryStatus.FAILED and reply.condemns_address:
        bounce_at_send(session, row.subscription.id, text)
        result.bounced += 1


def mark_unknown(
    session: Session, row: Claimed, lease_until: datetime, why: str, now: datetime
) -> None:
    session.execute(
        update(DELIVERY)
        .where(_ours(row.delivery_id, lease_until))
        .values(
            status=DeliveryStatus.UNKNOWN,
            smtp_reply=f"outcome unknown: {why}"[:2000],
            lease_until=None,
            next_attempt_at=now,
            updated_at=now,
        )
    )


# -- the per-message writes ----------------------------------------------------------------


@dataclass
class Sent:
    """A 250 not yet written: it goes out with the next message's claim."""

    row: Claimed
    lease_until: datetime
    reply: Reply


def _mark_statement() -> Any:
    """One UPDATE that records the previous message's 250 and claims the next one.

    The previous row is matched only while still ours (sending, same lease);
    the next only while it may be sent (queued, or a retry that is due), and it
    leaves `sending` with its lease, one more attempt and its Message-ID: the
    in-flight marker. RETURNING says which of the two matched, so a row taken
    by another sender, or cancelled, is passed over. An id of -1 stands for
    "no such row" (the first message, or the last 250).
    """
    c = DELIVERY.c
    prev_id = bindparam("prev_id", type_=Integer)
    next_id = bindparam("next_id", type_=Integer)
    now = bindparam("now", type_=c.updated_at.type)
    is_prev = c.id == prev_id

    def when_prev(value: Any, column: Any) -> Any:
        return case((is_prev, value), else_=column)

    return (
        update(DELIVERY)
        .where(
            # `id IN (a, b)` keeps this a two-row primary-key lookup in any plan.
            c.id.in_([prev_id, next_id]),
            or_(
                and_(
                    is_prev,
                    c.status == DeliveryStatus.SENDING,
                    c.lease_until == bindparam("prev_lease", type_=c.lease_until.type),
                ),
                and_(c.id == next_id, claimable(now)),
            ),
        )
        .values(
            status=when_prev(
                literal(DeliveryStatus.SENT, type_=c.status.type),
                literal(DeliveryStatus.SENDING, type_=c.status.type),
            ),
            smtp_code=when_prev(bindparam("code", type_=c.smtp_code.type), c.smtp_code),
            smtp_reply=when_prev(bindparam("reply", type_=c.smtp_reply.type), c.smtp_reply),
            message_id=when_prev(c.message_id, bindparam("message_id", type_=c.message_id.type)),
            lease_until=when_prev(null(), bindparam("next_lease", type_=c.lease_until.type)),
            attempts=when_prev(c.attempts, c.attempts + 1),
            sent_at=when_prev(now, c.sent_at),
            next_attempt_at=when_prev(null(), c.next_attempt_at),
            updated_at=now,
        )
        .returning(c.id)
    )


class Marks:
    """The per-message writes, one statement and one round trip each.

    On PostgreSQL they go over a connection of their own in autocommit with
    `synchronous_commit` off: each statement is its own transaction, and a
    commit no longer waits for the WAL flush (that wait was most of a send).
    A worker killed with SIGKILL still loses nothing the server acknowledged;
    only a crash of the PostgreSQL server itself could lose the last fraction
    of a second of these writes, and what that brings back is rows found in
    `sending` or `queued` again, i.e. a resend of those messages
    (duplicates), never a lost one. The statement is prepared once per
    connection and run through libpq: SQLAlchemy's execution path cost more
    CPU than PostgreSQL spent running it. Elsewhere (SQLite) the same
    statement goes through the session.

    A write goes in three steps: `stage` sets it up, `start` sends it and
    `finish` waits for its answer (the commit), sending it first if nobody
    did. The sender starts it just after MAIL FROM has gone (the server reads
    the command while we talk to the database) and finishes it before DATA,
    so the in-flight marker is still committed before any message byte goes
    out, and the database round trip no longer adds to each message's time.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.conn: Connection | None = None
        self.raw: Any = None
        self.pgconn: Any = None
        self.stmt = _mark_statement()
        self._pending = False
        self._staged: dict[str, Any] | None = None
        self._ids: set[int] = set()
        bind = session.get_bind()
        if bind.dialect.name == "postgresql":
            # Imported here once, not per message: a function-level import costs
            # microseconds on every call, and there are three per message.
            from psycopg import errors, generators
            from psycopg.pq import ExecStatus

            self._errors = errors
            self._generators = generators
            self._tuples_ok = ExecStatus.TUPLES_OK
            engine = bind if isinstance(bind, Engine) else bind.engine
            url = engine.url.render_as_string(hide_password=False)
            self.conn = async_commit_engine(url).connect()
            self.raw = self.conn.connection.driver_connection
            self.pgconn = self.raw.pgconn
            # Prepared once per database connection, which outlives this batch.
            kept = self.conn.connection.info
            if "mailer_delivery_mark" not in kept:
                kept["mailer_delivery_mark"] = prepare(
                    self.pgconn, b"mailer_delivery_mark", self.stmt
                )
            self.prepared = kept["mailer_delivery_mark"]

    def stage(
        self,
        sent: Sent | None,
        row: Claimed | None,
        lease_until: datetime | None,
        message_id: str | None,
        now: datetime,
    ) -> None:
        """The write that records `sent` and claims `row`, atomically; it goes out
        at `start` (or at the latest when its answer is awaited)."""
        self.finish()  # never two statements in flight
        self._staged = {
            "prev_id": sent.row.delivery_id if sent else -1,
            "code": sent.reply.code if sent else None,
            "reply": f"{sent.reply.code} {sent.reply.text}"[:2000] if sent else None,
            "message_id": message_id,
            "now": now,
            "next_id": row.delivery_id if row else -1,
            "prev_lease": sent.lease_until if sent else now,
            "next_lease": lease_until or now,
        }

    def start(self) -> None:
        """Send the staged write, if any, without waiting for its answer."""
        params, self._staged = self._staged, None
        if params is None:
            return
        if self.pgconn is None:
            self._ids = set(self.session.execute(self.stmt, params).scalars())
            self.session.commit()
            return
        self.pgconn.send_query_prepared(self.prepared.name, self.prepared.values(params))
        self.raw.wait(self._generators.send(self.pgconn))
        self._pending = True

    def finish(self) -> set[int]:
        """Wait for the write's commit; the ids of the two rows that were still ours."""
        self.start()
        if not self._pending:
            return self._ids
        self._pending = False
        results = self.raw.wait(self._generators.fetch_many(self.pgconn))
        self._ids = set()
        for result in results:
            if result.status != self._tuples_ok:
                raise self._errors.error_from_result(result)
            self._ids.update(int(result.get_value(i, 0)) for i in range(result.ntuples))
        return self._ids

    def holds(self, delivery_id: int) -> bool:
        """Whether the row is still ours once the pending write is in (`ready`)."""
        return delivery_id in self.finish()

    def write(
        self,
        sent: Sent | None,
        row: Claimed | None,
        lease_until: datetime | None,
        message_id: str | None,
        now: datetime,
    ) -> set[int]:
        """`stage` and `finish` in one: the ids still ours."""
        self.stage(sent, row, lease_until, message_id, now)
        return self.finish()

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            self.finish()
        except Exception:  # a broken connection must not go back to the pool
            self.conn.invalidate()
        finally:
            self.conn.close()


def mark_unbuildable(
    session: Session,
    settings: Settings,
    row: Claimed,
    error: Exception,
    result: BatchResult,
    now: datetime,
) -> None:
    """A message that could not be built (a sender we cannot encode, a broken key or
    template) costs the row an attempt, as a deferral does: retried with backoff and
    failed on record after the last one. Left queued, it was retried by every tick and
    its edition stayed `sending` for ever."""
    log.error("delivery %s: the message could not be built", row.delivery_id, exc_info=error)
    values: dict[str, Any] = {
        "smtp_code": None,
        "smtp_reply": f"not sent: the message could not be built: {error}"[:2000],
        "attempts": row.attempts,
        "lease_until": None,
        "updated_at": now,
    }
    if row.attempts >= settings.send_max_attempts:
        values |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None, "released": True}
        result.failed += 1
    else:
        values |= {
            "status": DeliveryStatus.DEFERRED,
            "next_attempt_at": now + backoff(row.attempts, settings.send_retry_base),
        }
        result.deferred += 1
    session.execute(
        update(DELIVERY).where(DELIVERY.c.id == row.delivery_id, claimable(now)).values(**values)
    )
    session.commit()


def settle(sent: Sent | None, ours: set[int], result: BatchResult) -> None:
    """Count a 250 once its write is in, as record() does for the other replies."""
    if sent is None:
        return
    result.sent += 1
    if sent.row.delivery_id in ours:
        result.replies.append((sent.row.delivery_id, sent.reply.code))
    else:
        # Our lease ran out and someone else owns the row now; theirs is the record.
        result.lost_lease += 1
        log.warning("delivery %s: lease lost before the reply was recorded", sent.row.delivery_id)
