"""Sending an edition: claim each row as it goes, send over one connection, record every reply.

Exactly-once is impossible over SMTP (the message may have gone between the
final "." and the reply), so the aim is: nothing lost, and at most one
duplicate per connection that dies. That is kept by three rules:

- A sender reads the due rows of its range a couple of hundred at a time,
  with their readers' status and the suppression list (a reader who left
  after the edition was prepared is skipped, not mailed), and locks nothing.
  Each row is claimed by one conditional UPDATE just before its message goes:
  still queued (or a retry that is due), it moves to `sending` with a lease,
  one more attempt and its Message-ID. A row another sender claimed first,
  or that was cancelled, is passed over.
- That claim is committed in the same statement that records the previous
  message's reply, and before any byte of DATA. A row found in `sending`
  after its lease ran out is therefore the one that was in flight
  (`unknown`, sent again: the one possible duplicate); rows never claimed
  are simply still queued.
- Replies drive the state machine: 2xx `sent`; 4xx `deferred` with an
  exponential `next_attempt_at` until the attempts run out; 5xx `failed`,
  and a 550-class reply also suppresses the address and ends every
  subscription of it as bounced, as a bounce report would
  (`subscriptions.end_address`). A lost connection puts the in-flight row in
  `unknown` and asks for a retry of the batch.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import make_msgid, parseaddr
from functools import partial
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from mailer import digests
from mailer.config import Settings
from mailer.db import among, async_commit_engine, is_postgres, prepare
from mailer.mail.dkim import DKIMSigner, signer_for
from mailer.mail.links import Links, Tokened
from mailer.mail.messages import MessageTemplate, Slot, Slots
from mailer.mail.rendering import EmailRenderer
from mailer.mail.transport import (
    ConnectionLost,
    Connections,
    Reply,
    close,
    connect,
    send,
    send_when,
)
from mailer.mail.verp import ReturnPaths, return_paths
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestVariant,
    EditionStatus,
    Newsletter,
    Status,
    Subscriber,
    Subscription,
    utcnow,
)
from mailer.readers import suppressions
from mailer.readers.addresses import address_hash
from mailer.readers.notices import list_id, unsubscribe_mailto
from mailer.readers.subscriptions import end_address, reset_soft_bounces
from mailer.sending.ratelimit import Limiter, Unlimited

log = logging.getLogger(__name__)

# Replies that say the mailbox does not exist or never will: stop mailing it.
HARD_BOUNCE = frozenset({550, 551, 553})
MAX_BACKOFF = timedelta(hours=12)
# Rows read per step (due_rows): a few statements and a commit each; the readers'
# status they carry is then at most one step old (under a second of sending).
CLAIM_CHUNK = 200

Opener = Callable[[], smtplib.SMTP]


class TemporaryFailure(RuntimeError):
    """The SMTP connection could not be made or broke: retry the batch later."""


class DeliveryError(ValueError):
    """A send request we refuse; the message says why."""


def backoff(attempts: int, base: int) -> timedelta:
    """Wait before attempt `attempts + 1`: base, 2×base, 4×base… capped at 12 hours."""
    return min(timedelta(seconds=base * 2 ** max(0, attempts - 1)), MAX_BACKOFF)


def envelope_sender(sender: str) -> str:
    return parseaddr(sender)[1] or sender


# -- messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """What every message of a newsletter gets on its way out, built once per batch:
    its own VERP return path (so a bounce names the delivery it is about) and,
    when MAILER_DKIM_* are set, a DKIM signature as the very last step."""

    sender: str
    paths: ReturnPaths
    signer: DKIMSigner | None

    @classmethod
    def for_newsletter(cls, settings: Settings, newsletter: Newsletter) -> Outgoing:
        return cls(newsletter.sender, return_paths(settings), signer_for(settings))

    def return_path(self, delivery_id: int) -> str:
        return self.paths.for_delivery(delivery_id, self.sender)

    def sign(self, message: bytes | list[bytes]) -> bytes:
        """The wire bytes, signed when DKIM is on (the message may come in its parts)."""
        if self.signer is not None:
            return self.signer.sign(message)
        return message if isinstance(message, bytes) else b"".join(message)


def message_template(
    settings: Settings,
    newsletter: Newsletter,
    subject: str,
    html: str,
    text: str,
    slots: Slots,
) -> MessageTemplate:
    return MessageTemplate(
        sender=newsletter.sender,
        subject=subject,
        html=html,
        text=text,
        list_id=list_id(newsletter, settings),
        list_unsubscribe_mailto=unsubscribe_mailto(newsletter, settings),
        extra_headers={"Precedence": "bulk"},
        slots=slots,
    )


def variant_template(
    settings: Settings, newsletter: Newsletter, variant: DigestVariant
) -> MessageTemplate:
    """A variant's message, everything but the reader, with the slots it was rendered with."""
    return message_template(
        settings,
        newsletter,
        variant.subject,
        variant.html,
        variant.text,
        Slots.stored(variant.slots),
    )


def personalise(
    template: MessageTemplate, links: Links, sub: Tokened, email: str, message_id: str
) -> list[bytes]:
    """The reader's wire bytes, as the parts they join from (what the DKIM signer
    takes): string replacement and QP only, no MIME building."""
    unsubscribe = links.unsubscribe(sub)
    parts, _ = template.build_parts(
        email,
        unsubscribe_url=unsubscribe,
        values={
            Slot.EMAIL: email,
            Slot.UNSUBSCRIBE_URL: unsubscribe,
            Slot.PREFERENCES_URL: links.preferences(sub),
        },
        message_id=message_id,
    )
    return parts


# -- claiming ---------------------------------------------------------------------------

# The per-message statements use the Core table: the ORM-enabled UPDATE path
# costs about a millisecond more per statement, which is most of a send.
DELIVERY: Table = Delivery.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Reader:
    """The subscription as the send loop needs it (its links' tokens, its id).

    A plain record, not an ORM object: loading, identity-mapping and expiring
    a Subscription per message was a visible part of a send's CPU."""

    id: int
    generation: int


@dataclass
class Claimed:
    delivery_id: int
    variant_id: int
    attempts: int
    subscription: Reader
    email: str


def _claimable(now: Any) -> Any:
    """A row that may be sent at `now` (a time, or the claim's bound parameter): queued,
    or a retry that is due. Spelt without IN (...), so the claim can be prepared."""
    c = DELIVERY.c
    return or_(
        c.status == DeliveryStatus.QUEUED,
        and_(
            or_(c.status == DeliveryStatus.DEFERRED, c.status == DeliveryStatus.UNKNOWN),
            c.next_attempt_at <= now,
        ),
    )


def due_rows(
    session: Session,
    digest_id: int,
    lo: int,
    hi: int,
    *,
    limit: int,
    now: datetime,
    after: int | None = None,
) -> list[Claimed]:
    """Up to `limit` rows of the range that may be sent now, with their readers; commits.

    Nothing is locked or written for them here: each row is claimed by the
    write that marks it in flight, just before its message goes (_Marks), so a
    row another sender took first is passed over. Rows whose reader is no
    longer active or is suppressed are marked `skipped` here (while still
    claimable) instead of being handed out: the reader's status is read fresh,
    so one who left after the edition was prepared is not mailed.
    """
    postgres = is_postgres(session)
    query = (
        select(
            Delivery.id,
            Delivery.variant_id,
            Delivery.attempts,
            Subscription.id.label("sub_id"),
            Subscription.status,
            Subscription.generation,
            Subscriber.email,
        )
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(
            Delivery.digest_id == digest_id,
            Delivery.id.between(lo, hi),
            _claimable(now),
        )
        .order_by(Delivery.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Delivery.id > after)
    picked = session.execute(query).all()
    if not picked:
        session.commit()
        return []
    hashes = {r.email: address_hash(r.email) for r in picked}
    blocked = suppressions.suppressed(session, hashes.values())
    out: list[Claimed] = []
    skipped: dict[str, list[int]] = {}
    for row in picked:
        if row.status is not Status.ACTIVE:
            skipped.setdefault(f"not mailed: subscription {row.status.value}", []).append(row.id)
        elif hashes[row.email] in blocked:
            skipped.setdefault("not mailed: address suppressed", []).append(row.id)
        elif row.variant_id is None:
            skipped.setdefault("not mailed: nothing to send", []).append(row.id)
        else:
            reader = Reader(row.sub_id, row.generation)
            out.append(Claimed(row.id, row.variant_id, row.attempts + 1, reader, row.email))
    for reason, ids in skipped.items():
        session.execute(
            update(DELIVERY)
            .where(among(DELIVERY.c.id, ids, postgres), _claimable(now))
            .values(
                status=DeliveryStatus.SKIPPED,
                smtp_reply=reason,
                lease_until=None,
                updated_at=now,
                released=True,  # its articles go back: a later edition may bring them
            )
        )
    session.commit()
    return out


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
    if values["status"] is DeliveryStatus.FAILED and reply.code in HARD_BOUNCE and not reply.local:
        hard_bounce(session, row.subscription.id, text)
        result.bounced += 1


def hard_bounce(session: Session, subscription_id: int, reply: str) -> None:
    """The address does not exist: never mail it again, from any newsletter (the same
    rule a bounce report for it takes; a reply our own relay made up, `Reply.local`,
    never comes here)."""
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


def _mark_unknown(
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
class _Sent:
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
                and_(c.id == next_id, _claimable(now)),
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


class _Marks:
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
        sent: _Sent | None,
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
        sent: _Sent | None,
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


# -- sending -------------------------------------------------------------------------------------


def claim_size(settings: Settings) -> int:
    """Rows read per step: the readers' status they carry is at most one step old."""
    return max(1, min(settings.send_batch_size, CLAIM_CHUNK))


def send_range(
    session: Session,
    settings: Settings,
    digest_id: int,
    lo: int,
    hi: int,
    *,
    limiter: Limiter | None = None,
    opener: Opener | None = None,
    connections: Connections | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> BatchResult:
    """Send every due row with id in [lo, hi] of the edition over one SMTP connection.

    The connection comes from `connections` (a worker keeps one between
    batches) or else from `opener`, and is closed at the end.
    Raises TemporaryFailure when the server can't be reached or the
    connection breaks; whatever was not sent is then still in the queue.
    """
    limiter = limiter or Unlimited()
    result = BatchResult()
    digest = session.get(Digest, digest_id)
    if digest is None or digest.status is not EditionStatus.SENDING:
        return result
    nl = session.get_one(Newsletter, digest.newsletter_id)
    outgoing = Outgoing.for_newsletter(settings, nl)
    links = Links.from_settings(settings)
    if connections is None:
        connections = Connections(opener or (lambda: connect(settings.smtp, settings.smtp_timeout)))
    open_conn = connections.take
    # A variant whose template can't be built (a sender we cannot encode) keeps the error:
    # each of its rows then fails on record (_unbuildable) instead of the whole batch.
    templates: dict[int, MessageTemplate | Exception] = {}
    cursor: int | None = None
    conn: smtplib.SMTP | None = None
    marks = _Marks(session)
    clean = False
    try:
        while True:
            rows = due_rows(
                session, digest_id, lo, hi, limit=claim_size(settings), now=clock(), after=cursor
            )
            if not rows:
                break
            cursor = rows[-1].delivery_id
            if conn is None:
                # Connect only once there is something to send: a duplicate task
                # finding nothing to send costs one query, not a connection.
                conn = _open(open_conn)
            for vid in {r.variant_id for r in rows} - templates.keys():
                variant = session.get_one(DigestVariant, vid)
                # Built once per variant per batch; the bodies are shared, not copied.
                try:
                    templates[vid] = variant_template(settings, nl, variant)
                except Exception as exc:
                    templates[vid] = exc
            session.commit()  # no transaction left open while the rows go out
            conn = _send_rows(
                session, settings, digest_id, rows, templates, links, outgoing,
                conn, open_conn, limiter, result, clock, marks,
            )  # fmt: skip
        clean = True
    finally:
        marks.close()
        if conn is not None:
            if clean:  # every exchange ended in a reply: fit to be kept
                connections.give_back(conn)
            else:
                close(conn)
    return result


def _send_rows(
    session: Session,
    settings: Settings,
    digest_id: int,
    rows: list[Claimed],
    templates: dict[int, MessageTemplate | Exception],
    links: Links,
    outgoing: Outgoing,
    conn: smtplib.SMTP,
    open_conn: Opener,
    limiter: Limiter,
    result: BatchResult,
    clock: Callable[[], datetime],
    marks: _Marks,
) -> smtplib.SMTP:
    sent: _Sent | None = None
    accepted: list[int] = []
    lease = timedelta(seconds=settings.send_lease)
    # The next row's message, built while the server takes in the current one.
    ahead: tuple[Claimed, str, bytes, str] | None = None
    # Pipelined, a message withdrawn after DATA costs the connection (transport._pipelined):
    # after one, the rest of these rows go step by step, where RSET withdraws one.
    pipelining = True

    def build(row: Claimed) -> tuple[str, bytes, str]:
        """Message-ID, wire bytes and VERP return path: all of a message but its sending."""
        template = templates[row.variant_id]
        if isinstance(template, Exception):
            raise template
        message_id = make_msgid(idstring=f"d{digest_id}.{row.delivery_id}", domain=template.domain)
        parts = personalise(template, links, row.subscription, row.email, message_id)
        return message_id, outgoing.sign(parts), outgoing.return_path(row.delivery_id)

    def build_ahead(row: Claimed) -> None:
        nonlocal ahead
        try:
            ahead = (row, *build(row))
        except Exception:  # raised again where it belongs, when that row's turn comes
            ahead = None

    def write_down() -> None:
        """The 250 we hold goes in on its own before the sender idles (rate limit),
        so its row never sits in `sending` past its lease."""
        nonlocal sent
        if sent is not None:
            _settle(sent, marks.write(sent, None, None, None, clock()), result)
            sent = None

    try:
        for index, row in enumerate(rows):
            try:
                if ahead is not None and ahead[0] is row:
                    _, message_id, data, return_path = ahead
                else:
                    message_id, data, return_path = build(row)
            except Exception as exc:
                _unbuildable(session, settings, row, exc, result, clock())
                continue
            finally:
                ahead = None
            limiter.acquire(before_waiting=write_down)
            # The previous row's 250 and this row's claim (its in-flight marker), in one
            # commit. It goes out once MAIL FROM has (the server reads that meanwhile)
            # and travels while MAIL FROM and RCPT TO do; DATA waits for it (ready).
            now = clock()
            lease_until = now + lease
            marks.stage(sent, row, lease_until, message_id, now)
            previous, sent = sent, None
            try:
                reply = send_when(
                    conn,
                    return_path,
                    row.email,
                    data,
                    sent_mail=marks.start,
                    ready=partial(marks.holds, row.delivery_id),
                    meanwhile=partial(build_ahead, rows[index + 1])
                    if index + 1 < len(rows)
                    else None,
                    pipelining=pipelining,
                )
            except ConnectionLost as exc:
                ours = marks.finish()
                _settle(previous, ours, result)
                if row.delivery_id in ours:  # claimed, so perhaps sent: sent again later
                    _mark_unknown(session, row, lease_until, f"connection lost: {exc}", clock())
                    session.commit()
                close(conn)
                raise TemporaryFailure(f"SMTP connection lost: {exc}") from exc
            # A refused envelope never asked `ready`: the write is awaited here then.
            ours = marks.finish()
            _settle(previous, ours, result)
            if reply is None or row.delivery_id not in ours:
                # Another sender claimed the row first (a second task over this range), or
                # it was cancelled: not ours, and the server was told RSET if it got this far,
                # or was hung up on if it waited for the message; then the rest go step by step.
                result.not_ours += 1
                pipelining = pipelining and conn.sock is not None
            elif reply.ok:
                sent = _Sent(row, lease_until, reply)
                accepted.append(row.subscription.id)
            else:
                # Rare, and may touch the subscription and the suppression list: the session.
                record(
                    session,
                    settings,
                    digest_id,
                    row,
                    lease_until,
                    reply,
                    message_id,
                    result,
                    clock(),
                )
                session.commit()
            if conn.sock is None:
                # The server is closing the connection (a 421: smtplib already has closed
                # it), or we hung up on a message it waited for: open another.
                conn = _reconnect(session, conn, open_conn)
    except BaseException:
        # Whatever broke, a 250 we hold is written down if the database lets us:
        # otherwise its row would come back as `unknown` and be sent twice.
        with contextlib.suppress(Exception):
            write_down()
        raise
    write_down()
    # Soft bounces count only in a row: a 250 starts the count again (one UPDATE).
    reset_soft_bounces(session, accepted)
    session.commit()
    return conn


def _unbuildable(
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
        update(DELIVERY).where(DELIVERY.c.id == row.delivery_id, _claimable(now)).values(**values)
    )
    session.commit()


def _open(open_conn: Opener) -> smtplib.SMTP:
    """A connection for the range; an unreachable server is a TemporaryFailure (retry)."""
    try:
        return open_conn()
    except ConnectionLost as exc:
        raise TemporaryFailure(str(exc)) from exc


def _reconnect(session: Session, conn: smtplib.SMTP, open_conn: Opener) -> smtplib.SMTP:
    session.commit()
    close(conn)
    return _open(open_conn)


def _settle(sent: _Sent | None, ours: set[int], result: BatchResult) -> None:
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


# -- sweeping (the tick) ------------------------------------------------------------------------


def recover_expired(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Rows left in `sending` by a dead worker: untouched ones back to the queue,
    the one in flight to `unknown` (sent again), or `failed` when out of attempts."""
    now = now or utcnow()
    expired = and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now)
    untouched = session.execute(
        update(Delivery)
        .where(expired, Delivery.message_id.is_(None))
        .values(
            status=DeliveryStatus.QUEUED,
            lease_until=None,
            attempts=Delivery.attempts - 1,
            next_attempt_at=now,
            updated_at=now,
        )
    ).rowcount  # type: ignore[attr-defined]
    note = literal("outcome unknown: worker lost while sending ") + Delivery.message_id
    in_flight = session.execute(
        update(Delivery)
        .where(
            expired,
            Delivery.message_id.is_not(None),
            Delivery.attempts < settings.send_max_attempts,
        )
        .values(
            status=DeliveryStatus.UNKNOWN,
            smtp_reply=note,
            lease_until=None,
            next_attempt_at=now,
            updated_at=now,
        )
    ).rowcount  # type: ignore[attr-defined]
    exhausted = session.execute(
        update(Delivery)
        .where(expired, Delivery.message_id.is_not(None))
        .values(
            status=DeliveryStatus.FAILED,
            smtp_reply=note,
            lease_until=None,
            updated_at=now,
            released=True,
        )
    ).rowcount  # type: ignore[attr-defined]
    session.flush()
    return int(untouched) + int(in_flight) + int(exhausted)


def due_ranges(
    session: Session, settings: Settings, now: datetime | None = None
) -> list[tuple[int, int, int]]:
    """(edition, lo, hi) ranges with rows to send now whose task may have been lost.

    Retries that came due, rows a sweep handed back, and queued rows of an
    edition nobody has touched for a whole lease (its tasks were lost). An
    edition still draining a long queue is left alone, so a big send isn't
    enqueued again every minute.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=settings.send_lease)
    sending = select(Digest.id).where(Digest.status == EditionStatus.SENDING)
    due = session.execute(
        select(Delivery.digest_id, Delivery.id)
        .where(
            Delivery.digest_id.in_(sending),
            or_(
                and_(
                    Delivery.status.in_(
                        (DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN, DeliveryStatus.QUEUED)
                    ),
                    Delivery.next_attempt_at <= now,
                ),
            ),
        )
        .order_by(Delivery.digest_id, Delivery.id)
    ).all()
    ids: dict[int, set[int]] = {}
    for digest_id, delivery_id in due:
        ids.setdefault(digest_id, set()).add(delivery_id)
    last_touch = dict(
        session.execute(
            select(Delivery.digest_id, func.max(Delivery.updated_at))
            .where(Delivery.digest_id.in_(sending))
            .group_by(Delivery.digest_id)
        ).all()
    )
    for digest_id, touched in last_touch.items():
        if touched is not None and touched < stale:
            ids.setdefault(digest_id, set()).update(
                session.scalars(
                    select(Delivery.id).where(
                        Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.QUEUED
                    )
                )
            )
    out = []
    for digest_id, found in sorted(ids.items()):
        for lo, hi in digests.chunk_ranges(sorted(found), settings.send_batch_size):
            out.append((digest_id, lo, hi))
    return out


# -- the operator's test send ---------------------------------------------------------


def send_test(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    newsletter: Newsletter,
    to: str,
    *,
    opener: Opener | None = None,
    now: datetime | None = None,
) -> tuple[Reply, str]:
    """The next edition's mail to one address, marked [TEST], recorded nowhere."""
    from mailer.readers.addresses import InvalidAddress, normalise

    try:
        address = normalise(to).email
    except InvalidAddress as exc:
        raise DeliveryError(str(exc)) from exc
    draft = digests.draft(session, settings, renderer, newsletter, now=now)
    template = message_template(
        settings,
        newsletter,
        f"[TEST] {draft.rendered.subject}",
        draft.rendered.html,
        draft.rendered.text,
        draft.slots,
    )
    values = digests.neutral_values(settings, newsletter)
    values[Slot.EMAIL] = address
    message_id = make_msgid(idstring="test", domain=template.domain)
    data, _ = template.build(
        address,
        unsubscribe_url=values[Slot.UNSUBSCRIBE_URL],
        values=values,
        message_id=message_id,
    )
    try:
        conn = opener() if opener else connect(settings.smtp, settings.smtp_timeout)
    except ConnectionLost as exc:
        raise DeliveryError(str(exc)) from exc
    data = Outgoing.for_newsletter(settings, newsletter).sign(data)
    try:
        reply = send(conn, envelope_sender(newsletter.sender), address, data)
    except ConnectionLost as exc:
        raise DeliveryError(f"the SMTP connection broke: {exc}") from exc
    finally:
        close(conn)
    return reply, message_id
