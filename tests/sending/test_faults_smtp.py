"""A misbehaving SMTP server: every reader ends delivered, or deferred/failed on record.

The faults a real relay has: it refuses connections, drops the connection after
the message's data but before its reply, answers 421 to everything for a while,
answers 452 "too many recipients" once a connection has carried a few, answers
too slowly. Each test sends a 100-reader edition over a real aiosmtpd server
and PostgreSQL through `loop.send_range` (what a send task runs) and the
tick's sweep, round after round as the workers would, until nothing is owed.

Single 4xx/5xx replies, a connection lost at RCPT and the unreachable server's
first round are in test_send_replies.py; these run the faults to the end.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.editions import close, prepare, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.mail.sink import free_port
from mailer.models import Delivery, Frequency
from mailer.sending import loop, sweeps
from tests.conftest import configure, wait_for
from tests.helpers.editions import add_article, add_readers_bulk, make_newsletter
from tests.smtp import RecordingHandler, SMTPServer

READERS = 100


class FaultyHandler(RecordingHandler):
    """The recording handler plus faults that need the SMTP session: count RCPTs
    per connection, or drop a connection after its data arrived."""

    def __init__(self, pipelining: bool = False) -> None:
        super().__init__(pipelining)
        self.rcpts_per_connection: Counter[int] = Counter()
        self.rcpt_limit: int | None = None
        self.drop_every: int = 0
        self.drops_left: int = 0
        self.drops: int = 0
        self.messages = 0
        self.busy = 0

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SMTPSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self.rcpts_per_connection[id(session)] += 1
        if self.rcpt_limit is not None and self.rcpts_per_connection[id(session)] > self.rcpt_limit:
            return "452 4.5.3 Too many recipients"
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        self.busy += 1
        try:
            reply = await super().handle_DATA(server, session, envelope)
        finally:
            self.busy -= 1
        self.messages += 1
        if self.drops_left and self.messages % self.drop_every == 0:
            # The message is here, but the client never hears so: the classic in-flight loss.
            self.drops_left -= 1
            self.drops += 1
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
        return reply


@pytest.fixture(params=[False, True], ids=["stepwise", "pipelined"])
def faulty(request: pytest.FixtureRequest) -> Iterator[SMTPServer]:
    handler = FaultyHandler(pipelining=request.param)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    server = SMTPServer("127.0.0.1", port, handler, controller)
    yield server
    server.stop()


def prepared(session: Session, settings: Settings) -> int:
    nl = make_newsletter(session)
    add_readers_bulk(session, nl, READERS)
    add_article(session, nl, "Story")
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    prepare.prepare(session, settings, EmailRenderer(settings.email_templates), edition.id)
    session.commit()
    return edition.id


def drain(
    session: Session,
    settings: Settings,
    digest_id: int,
    before_round: Callable[[int], None] = lambda i: None,
    rounds: int = 30,
) -> int:
    """Send rounds over the whole edition as workers and the tick would, until no row
    is owed; returns how many rounds broke off with a TemporaryFailure."""
    lo, hi = session.execute(
        select(func.min(Delivery.id), func.max(Delivery.id)).where(Delivery.digest_id == digest_id)
    ).one()
    broken = 0
    for i in range(rounds):
        before_round(i)
        sweeps.recover_expired(session, settings)
        session.commit()
        try:
            loop.send_range(session, settings, digest_id, lo, hi)
        except loop.TemporaryFailure:
            broken += 1
        if not open_rows(session, digest_id):
            return broken
    raise AssertionError(f"still owed after {rounds} rounds: {close.counts(session, digest_id)}")


def open_rows(session: Session, digest_id: int) -> int:
    """Rows that may still change: queued, sending, deferred or unknown."""
    session.expire_all()
    return int(
        session.scalar(
            select(func.count()).where(
                Delivery.digest_id == digest_id, Delivery.status.in_(close.OPEN)
            )
        )
        or 0
    )


def assert_outcome(
    server: SMTPServer, session: Session, digest_id: int, duplicates_at_most: int
) -> None:
    """None lost: each reader received it or its row says why not. None doubled
    beyond one per connection that died with a message in flight."""
    got = Counter(r.rcpt_tos[0] for r in server.received)
    tally = close.counts(session, digest_id)
    assert tally.get("sent", 0) == len(got)
    assert tally.get("sent", 0) + tally.get("failed", 0) + tally.get("deferred", 0) == READERS
    twice = {a: n for a, n in got.items() if n > 1}
    assert len(twice) <= duplicates_at_most and set(twice.values()) <= {2}, twice


def test_server_refusing_connections_then_back_delivers_each_reader_once(
    session, settings, monkeypatch
):
    port = free_port()  # nothing listens here yet: connections are refused
    settings = configure(monkeypatch, smtp_url=f"smtp://127.0.0.1:{port}")
    digest_id = prepared(session, settings)
    handler = FaultyHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    server = SMTPServer("127.0.0.1", port, handler, controller)

    def come_back(i: int) -> None:
        if i == 3:
            controller.start()

    try:
        broken = drain(session, settings, digest_id, come_back)
    finally:
        server.stop()
    assert broken == 3
    assert_outcome(server, session, digest_id, duplicates_at_most=0)
    assert close.counts(session, digest_id) == {"sent": READERS}
    # Refused connections sent nothing, so they cost no attempt.
    assert set(session.scalars(select(Delivery.attempts))) == {1}


def test_connection_dropped_after_data_resends_only_the_message_in_flight(
    session, settings, faulty, monkeypatch
):
    settings = configure(monkeypatch, smtp_url=faulty.url, send_retry_base="0")
    digest_id = prepared(session, settings)
    handler = faulty.handler
    assert isinstance(handler, FaultyHandler)
    handler.drop_every, handler.drops_left = 17, 3
    broken = drain(session, settings, digest_id)
    assert broken == handler.drops == 3
    assert_outcome(faulty, session, digest_id, duplicates_at_most=3)
    assert close.counts(session, digest_id) == {"sent": READERS}
    assert len(faulty.received) == READERS + 3  # exactly the three in flight, again


def test_421_to_everything_for_a_while_defers_then_delivers_each_reader_once(
    session, settings, faulty, monkeypatch
):
    settings = configure(
        monkeypatch, smtp_url=faulty.url, send_retry_base="0", send_max_attempts="6"
    )
    digest_id = prepared(session, settings)

    def closing_for_two_rounds(i: int) -> None:
        faulty.handler.script.on_rcpt = (lambda a: "421 4.3.2 shutting down") if i < 2 else None

    drain(session, settings, digest_id, closing_for_two_rounds)
    assert_outcome(faulty, session, digest_id, duplicates_at_most=0)
    assert close.counts(session, digest_id) == {"sent": READERS}
    assert set(session.scalars(select(Delivery.attempts))) == {3}


def test_421_outlasting_the_attempts_fails_every_reader_on_record_and_sends_none(
    session, settings, faulty, monkeypatch
):
    settings = configure(
        monkeypatch, smtp_url=faulty.url, send_retry_base="0", send_max_attempts="3"
    )
    digest_id = prepared(session, settings)
    faulty.handler.script.on_rcpt = lambda a: "421 4.3.2 shutting down"
    drain(session, settings, digest_id)
    assert faulty.received == []
    assert close.counts(session, digest_id) == {"failed": READERS}
    assert set(session.scalars(select(Delivery.smtp_code))) == {421}


def test_452_too_many_recipients_per_connection_defers_the_rest_until_all_are_delivered(
    session, settings, faulty, monkeypatch
):
    settings = configure(
        monkeypatch, smtp_url=faulty.url, send_retry_base="0", send_max_attempts="10"
    )
    digest_id = prepared(session, settings)
    handler = faulty.handler
    assert isinstance(handler, FaultyHandler)
    handler.rcpt_limit = 30
    drain(session, settings, digest_id)
    assert_outcome(faulty, session, digest_id, duplicates_at_most=0)
    assert close.counts(session, digest_id) == {"sent": READERS}
    assert max(session.scalars(select(Delivery.attempts))) > 1  # some really were deferred


def test_server_slower_than_the_timeout_loses_at_most_the_message_in_flight_per_connection(
    session, settings, faulty, monkeypatch
):
    """A 30 s answer against the default 30 s timeout behaves as a 2.5 s answer
    against a 1 s timeout: the client gives up, the row is `unknown`, sent again."""
    settings = configure(monkeypatch, smtp_url=faulty.url, smtp_timeout="1", send_retry_base="0")
    digest_id = prepared(session, settings)
    handler = faulty.handler

    def slow_for_two_rounds(i: int) -> None:
        handler.script.delay = 2.5 if i < 2 else 0.0

    broken = drain(session, settings, digest_id, slow_for_two_rounds)
    assert broken == 2
    # The slow server still takes the timed-out messages in the end: wait for it.
    assert isinstance(handler, FaultyHandler)
    wait_for(lambda: handler.busy == 0, timeout=10)
    assert_outcome(faulty, session, digest_id, duplicates_at_most=2)
    assert close.counts(session, digest_id) == {"sent": READERS}
