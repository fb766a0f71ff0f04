"""The tick takes back what a dead sender held, and only that (mailer/sending/senders.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from mailer.models import Delivery, DeliveryStatus, Sender, utcnow
from mailer.sending import loop, senders, sweeps
from tests.helpers.editions import sendable_edition


def hold(session, digest_id: int, ids: list[int], lease: timedelta) -> None:
    """Rows as a sender leaves them mid-send: claimed, in flight, with a lease."""
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(
            status=DeliveryStatus.SENDING,
            lease_until=utcnow() + lease,
            message_id="<x@example.org>",
            attempts=1,
        )
    )


def sender(session, name: str, digest_id: int, lo: int, hi: int, silent_for: float) -> None:
    seen = utcnow() - timedelta(seconds=silent_for)
    session.add(Sender(id=name, digest_id=digest_id, lo=lo, hi=hi, seen_at=seen))


def status_of(session, delivery_id: int) -> DeliveryStatus:
    session.expire_all()
    return session.get_one(Delivery, delivery_id).status


def test_a_silent_sender_s_rows_come_back_at_once_and_its_range_goes_again(session, settings):
    digest_id, lo, hi, _ = sendable_edition(session, settings, 10)
    middle = lo + 4
    hold(session, digest_id, [middle], timedelta(seconds=300))
    sender(session, "dead", digest_id, lo, hi, silent_for=60)
    session.commit()

    assert senders.reclaim_dead(session) == [(digest_id, lo, hi)]
    sweeps.recover_expired(session, settings)
    session.commit()

    assert status_of(session, middle) is DeliveryStatus.UNKNOWN  # in flight: sent again
    assert session.scalars(select(Sender)).all() == []
    # what the tick enqueues for it sends every row, the one in doubt included
    result = loop.send_range(session, settings, digest_id, lo, hi)
    assert result.sent == 10


def test_a_beating_sender_and_a_range_it_shares_keep_their_leases(session, settings):
    digest_id, lo, hi, _ = sendable_edition(session, settings, 10)
    hold(session, digest_id, [lo + 1, lo + 8], timedelta(seconds=300))
    sender(session, "alive", digest_id, lo, lo + 5, silent_for=1)
    sender(session, "dead-but-shared", digest_id, lo + 3, hi, silent_for=60)
    session.commit()

    assert senders.reclaim_dead(session) == [(digest_id, lo + 3, hi)]
    sweeps.recover_expired(session, settings)
    session.commit()

    # lo+8 lies in the part only the dead one covered, but the live one's range overlaps
    # the dead one's: any claim in it might be the live sender's, so the lease decides.
    assert status_of(session, lo + 1) is DeliveryStatus.SENDING
    assert status_of(session, lo + 8) is DeliveryStatus.SENDING
    assert [s.id for s in session.scalars(select(Sender))] == ["alive"]


def test_a_sender_taken_for_dead_that_beats_again_is_written_back(session, settings):
    digest_id, lo, hi, _ = sendable_edition(session, settings, 2)
    work = senders._Work(settings.database, digest_id, lo, hi)
    senders.beat(settings.database, "back", work)
    session.expire_all()
    assert session.get_one(Sender, "back").lo == lo
