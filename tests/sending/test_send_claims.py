"""Each row is claimed by the write that marks it in flight: senders racing over one
range mail every reader once, and a sender that must wait writes its 250 down first."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select

from mailer import db
from mailer.models import Delivery, DeliveryStatus
from mailer.sending import loop, marks
from mailer.sending.ratelimit import Unlimited
from tests.helpers.editions import sendable_edition


@pytest.mark.parametrize("smtp_server", [False, True], indirect=True, ids=["stepwise", "pipelined"])
def test_two_senders_over_the_same_range_mail_each_reader_once(session, settings, smtp_server):
    digest_id, lo, hi, _ = sendable_edition(session, settings, 60)
    results: list[marks.BatchResult] = []
    start = threading.Barrier(2)

    def sender() -> None:
        own = db.session_factory(settings.database)()
        try:
            start.wait()
            results.append(loop.send_range(own, settings, digest_id, lo, hi))
        finally:
            own.close()

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    got = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert len(got) == 60 and set(got.values()) == {1}
    assert sum(r.sent for r in results) == 60
    rows = session.scalars(select(Delivery).where(Delivery.digest_id == digest_id)).all()
    assert {(r.status, r.attempts) for r in rows} == {(DeliveryStatus.SENT, 1)}


class SlowLimiter(Unlimited):
    """Makes every sender wait before its second and later messages, and looks at
    the database while it does."""

    def __init__(self, look) -> None:
        super().__init__(sleep=lambda seconds: None)
        self.look = look
        self.calls = 0
        self.seen: list[dict[str, str]] = []

    def reserve(self) -> float:
        self.calls += 1
        return 0.0 if self.calls == 1 else 5.0

    def acquire(self, before_waiting=None) -> None:
        super().acquire(before_waiting)
        if self.calls > 1:
            self.seen.append(self.look())


def test_a_sender_that_must_wait_writes_its_250_down_first(session, settings, smtp_server):
    digest_id, lo, hi, _ = sendable_edition(session, settings, 3)

    def statuses() -> dict[str, str]:
        with db.session_scope(settings.database) as look:
            rows = look.scalars(select(Delivery).where(Delivery.digest_id == digest_id))
            return {str(r.id): r.status.value for r in rows}

    limiter = SlowLimiter(statuses)
    result = loop.send_range(session, settings, digest_id, lo, hi, limiter=limiter)
    assert result.sent == 3
    # While it waited for its second and third slot, nothing it had sent was left in flight.
    assert [sorted(seen.values()) for seen in limiter.seen] == [
        ["queued", "queued", "sent"],
        ["queued", "sent", "sent"],
    ]


def test_only_the_per_message_writes_skip_the_wal_flush(session, settings, smtp_server):
    digest_id, lo, hi, _ = sendable_edition(session, settings, 3)
    assert loop.send_range(session, settings, digest_id, lo, hi).sent == 3
    with db.get_engine(settings.database).connect() as other:
        assert other.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    with db.async_commit_engine(settings.database).connect() as writer:
        assert writer.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"


def test_a_crash_between_messages_still_writes_down_the_250_it_held(session, settings, smtp_server):
    """The first message was accepted; the sender then dies before the second (here its
    rate limiter raises). The first row is `sent`, not left in flight to come back as
    `unknown` and go out twice."""
    digest_id, lo, hi, _ = sendable_edition(session, settings, 2)

    class DiesOnTheSecond(Unlimited):
        taken = 0

        def acquire(self, before_waiting=None):
            self.taken += 1
            if self.taken > 1:
                raise RuntimeError("worker blew up")

    with pytest.raises(RuntimeError, match="worker blew up"):
        loop.send_range(session, settings, digest_id, lo, hi, limiter=DiesOnTheSecond())
    session.expire_all()
    rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
    assert [r.status for r in rows] == [DeliveryStatus.SENT, DeliveryStatus.QUEUED]
    assert len(smtp_server.received) == 1


def test_a_message_that_fails_to_build_costs_its_row_an_attempt_and_the_batch_goes_on(
    session, settings, smtp_server, monkeypatch
):
    """Building the second of three messages fails: that row is deferred with the reason
    (an attempt counted, failed after the last), the others go out. It used to raise out
    of the batch and leave the row queued for every tick to try again for ever."""
    digest_id, lo, hi, emails = sendable_edition(session, settings, 3)
    real = loop.personalise

    def personalise(*args, **kwargs):
        if args[3] == emails[1]:  # built ahead and at its turn: fails both times
            raise RuntimeError("template blew up")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "personalise", personalise)
    result = loop.send_range(session, settings, digest_id, lo, hi)
    session.expire_all()
    rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
    assert [(r.status, r.attempts) for r in rows] == [
        (DeliveryStatus.SENT, 1),
        (DeliveryStatus.DEFERRED, 1),
        (DeliveryStatus.SENT, 1),
    ]
    assert "could not be built: template blew up" in (rows[1].smtp_reply or "")
    assert (result.sent, result.deferred) == (2, 1)
    assert len(smtp_server.received) == 2


def test_the_embedded_default_sends_an_edition_on_sqlite(sqlite_url, smtp_server, monkeypatch):
    """The same claim-and-record statement, run through the session on SQLite."""
    from tests.conftest import configure

    settings = configure(monkeypatch, database_url=sqlite_url, smtp_url=smtp_server.url)
    sqlite = db.session_factory(sqlite_url)()
    try:
        digest_id, lo, hi, _ = sendable_edition(sqlite, settings, 5)
        result = loop.send_range(sqlite, settings, digest_id, lo, hi)
        rows = sqlite.scalars(select(Delivery).where(Delivery.digest_id == digest_id)).all()
    finally:
        sqlite.close()
    assert result.sent == 5
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        f"r{i:03d}@example.org" for i in range(5)
    ]
    assert {(r.status, r.attempts, r.lease_until) for r in rows} == {(DeliveryStatus.SENT, 1, None)}
