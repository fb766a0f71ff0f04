"""The send loop: every due row of a range over one SMTP connection, each reply recorded.

Exactly-once is impossible over SMTP (the message may have gone between the
final "." and the reply), so the aim is: nothing lost, and at most one
duplicate per connection that dies. That is kept by three rules:

- A sender reads the due rows of its range a couple of hundred at a time
  (`claims.due_rows`) and locks nothing. Each row is claimed by one
  conditional UPDATE just before its message goes: still queued (or a retry
  that is due), it moves to `sending` with a lease, one more attempt and its
  Message-ID. A row another sender claimed first, or that was cancelled, is
  passed over.
- That claim is committed in the same statement that records the previous
  message's reply, and before any byte of DATA (`marks.Marks`). A row found
  in `sending` after its lease ran out is therefore the one that was in
  flight (`unknown`, sent again: the one possible duplicate); rows never
  claimed are simply still queued.
- Replies drive the state machine (`marks.record`). A lost connection puts
  the in-flight row in `unknown` and asks for a retry of the batch.
"""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import make_msgid
from functools import partial

from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.mail.links import Links
from mailer.mail.messages import MessageTemplate
from mailer.mail.transport import ConnectionLost, Connections, close, connect, send_when
from mailer.models import Digest, DigestVariant, EditionStatus, Newsletter, utcnow
from mailer.readers.subscriptions import reset_soft_bounces
from mailer.sending.claims import Claimed, claim_size, due_rows
from mailer.sending.marks import (
    BatchResult,
    Marks,
    Sent,
    mark_unbuildable,
    mark_unknown,
    record,
    settle,
)
from mailer.sending.outgoing import Outgoing, personalise, variant_template
from mailer.sending.ratelimit import Limiter, Unlimited

Opener = Callable[[], smtplib.SMTP]


class TemporaryFailure(RuntimeError):
    """The SMTP connection could not be made or broke: retry the batch later."""


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
    # each of its rows then fails on record (mark_unbuildable) instead of the whole batch.
    templates: dict[int, MessageTemplate | Exception] = {}
    cursor: int | None = None
    conn: smtplib.SMTP | None = None
    marks = Marks(session)
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
    marks: Marks,
) -> smtplib.SMTP:
    sent: Sent | None = None
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
            settle(sent, marks.write(sent, None, None, None, clock()), result)
            sent = None

    try:
        for index, row in enumerate(rows):
            try:
                if ahead is not None and ahead[0] is row:
                    _, message_id, data, return_path = ahead
                else:
                    message_id, data, return_path = build(row)
            except Exception as exc:
                mark_unbuildable(session, settings, row, exc, result, clock())
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
                settle(previous, ours, result)
                if row.delivery_id in ours:  # claimed, so perhaps sent: sent again later
                    mark_unknown(session, row, lease_until, f"connection lost: {exc}", clock())
                    session.commit()
                close(conn)
                raise TemporaryFailure(f"SMTP connection lost: {exc}") from exc
            # A refused envelope never asked `ready`: the write is awaited here then.
            ours = marks.finish()
            settle(previous, ours, result)
            if reply is None or row.delivery_id not in ours:
                # Another sender claimed the row first (a second task over this range), or
                # it was cancelled: not ours, and the server was told RSET if it got this far,
                # or was hung up on if it waited for the message; then the rest go step by step.
                result.not_ours += 1
                pipelining = pipelining and conn.sock is not None
            elif reply.ok:
                sent = Sent(row, lease_until, reply)
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
