"""Who is sending what, and who has died: rows a killed worker held come back in seconds.

A send task claims its rows one at a time, each with a lease
(`MAILER_SEND_LEASE`, 300 s): a worker that dies (SIGKILL, OOM, a lost
machine) leaves its in-flight row in `sending` until the lease runs out, and
its task message is lost with it (Redis gives an unacknowledged task back
only after an hour). Waiting for the lease and then for the edition to look
untouched for another one stalled the send for two leases, 10-20 minutes.

So each send task says what it is doing: a `sender` row with its range,
beaten every `HEARTBEAT` seconds by one thread in the worker process. A
sender not heard from for `DEAD_AFTER` is dead: the tick
(`reclaim_dead`) ends the leases of the rows it held in its range, which
the usual lease sweep then turns back into `queued` (never claimed) or
`unknown` (the one in flight: sent again, the documented one duplicate per
dead connection), and enqueues its range again. A range another live sender
also covers (a redelivered task) keeps its leases: one of those rows may be
the live sender's. Enqueueing a range twice is harmless: each row is claimed
by one conditional UPDATE, and a task finding nothing to send costs a query.

The lease stays as the backstop for a sender that is alive but stuck.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from mailer.db import get_engine
from mailer.models import Delivery, DeliveryStatus, Sender, utcnow

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds between beats
DEAD_AFTER = timedelta(seconds=20)  # four beats missed


@dataclass(frozen=True)
class _Work:
    database: str
    digest_id: int
    lo: int
    hi: int


class _Heart:
    """One daemon thread per process beating for every sender the process runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work: dict[str, _Work] = {}
        self.thread: threading.Thread | None = None

    def add(self, sender_id: str, work: _Work) -> None:
        with self.lock:
            self.work[sender_id] = work
            # Not alive after a fork (prefork pool children start their own).
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="sender-heartbeat")
                self.thread.daemon = True
                self.thread.start()

    def remove(self, sender_id: str) -> None:
        with self.lock:
            self.work.pop(sender_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT)
            with self.lock:
                work = dict(self.work)
            for sender_id, what in work.items():
                try:
                    beat(what.database, sender_id, what)
                except Exception:  # the database is away: the beat after this one tries again
                    log.warning("sender %s: heartbeat not recorded", sender_id, exc_info=True)


_heart = _Heart()


def beat(database: str, sender_id: str, work: _Work, now: datetime | None = None) -> None:
    """Say this sender is alive; a row the tick took for dead is written again."""
    now = now or utcnow()
    with get_engine(database).begin() as conn:
        found = conn.execute(
            update(Sender).where(Sender.id == sender_id).values(seen_at=now)
        ).rowcount
        if not found:
            conn.execute(
                insert(Sender).values(
                    id=sender_id, digest_id=work.digest_id, lo=work.lo, hi=work.hi, seen_at=now
                )
            )


@contextlib.contextmanager
def at_work(session: Session, database: str, digest_id: int, lo: int, hi: int) -> Iterator[str]:
    """Announce a send over [lo, hi] of an edition and beat for it until it ends."""
    sender_id = f"{os.getpid()}-{secrets.token_hex(6)}"
    work = _Work(database, digest_id, lo, hi)
    session.add(Sender(id=sender_id, digest_id=digest_id, lo=lo, hi=hi, seen_at=utcnow()))
    session.commit()  # before the first claim, so the tick knows whose claims they are
    _heart.add(sender_id, work)
    try:
        yield sender_id
    finally:
        _heart.remove(sender_id)
        try:
            session.rollback()
            session.execute(delete(Sender).where(Sender.id == sender_id))
            session.commit()
        except Exception:  # the database is away: the row looks dead soon, which is harmless
            log.warning("sender %s: could not sign off", sender_id, exc_info=True)


def reclaim_dead(session: Session, now: datetime | None = None) -> list[tuple[int, int, int]]:
    """End the leases of rows held by senders not heard from for DEAD_AFTER; their ranges,
    to enqueue again. Run before the lease sweep, which then hands the rows back."""
    now = now or utcnow()
    cutoff = now - DEAD_AFTER
    everyone = session.scalars(select(Sender).with_for_update()).all()
    live = [s for s in everyone if s.seen_at >= cutoff]
    ranges = []
    for dead in (s for s in everyone if s.seen_at < cutoff):
        shared = any(
            other.digest_id == dead.digest_id and other.lo <= dead.hi and dead.lo <= other.hi
            for other in live
        )
        if not shared:
            session.execute(
                update(Delivery)
                .where(
                    Delivery.digest_id == dead.digest_id,
                    Delivery.id.between(dead.lo, dead.hi),
                    Delivery.status == DeliveryStatus.SENDING,
                    Delivery.lease_until > cutoff,
                )
                .values(lease_until=cutoff)
            )
        log.warning(
            "sender %s died (last heard %s) over edition %s rows %s-%s: its range goes again",
            dead.id, dead.seen_at.isoformat(), dead.digest_id, dead.lo, dead.hi,
        )  # fmt: skip
        ranges.append((dead.digest_id, dead.lo, dead.hi))
        session.delete(dead)
    session.flush()
    return ranges
