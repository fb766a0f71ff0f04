"""PIPELINING (RFC 2920): where the relay offers it, MAIL, RCPT and DATA go in one write.

Two round trips a message instead of four. What must not change: every reply
is read and kept with its own message, a refused envelope sends nothing, and
a message withdrawn while the server waits for it (its row is no longer ours)
is never delivered.
"""

from __future__ import annotations

import pytest

from mailer import db
from mailer.mail.transport import connect, send, send_when
from mailer.models import DeliveryStatus
from mailer.operators import editions as editions_ops
from mailer.sending import loop
from mailer.sending.ratelimit import Unlimited
from tests.helpers.editions import deliveries_by_email, sendable_edition
from tests.smtp import start_smtp_server

BOTH = pytest.mark.parametrize(
    "smtp_server", [False, True], indirect=True, ids=["stepwise", "pipelined"]
)
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


@BOTH
def test_a_relay_offering_pipelining_gets_the_envelope_and_data_in_one_write(
    session, settings, smtp_server
):
    digest_id, lo, hi, emails = sendable_edition(session, settings, 20)
    result = loop.send_range(session, settings, digest_id, lo, hi)
    assert result.sent == 20
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == emails
    pipelined = smtp_server.handler.pipelining
    assert smtp_server.handler.data_before_rcpt_reply == (20 if pipelined else 0)


@BOTH
def test_refusals_between_acceptances_keep_each_reply_with_its_own_message(
    session, settings, smtp_server
):
    """A reply read one too few or one too many would shift every later verdict."""
    digest_id, lo, hi, emails = sendable_edition(session, settings, 30)
    index = {e: i for i, e in enumerate(emails)}
    mails = 0

    def on_mail(address: str) -> str | None:
        nonlocal mails
        mails += 1
        return "451 4.3.2 busy, try later" if mails % 7 == 0 else None

    script = smtp_server.handler.script
    script.on_mail = on_mail
    script.on_rcpt = lambda a: "550 5.1.1 no such user" if index[a] % 3 == 0 else None
    script.on_data = lambda env: (
        "452 4.3.1 out of space" if index[env.rcpt_tos[0]] % 5 == 1 else None
    )
    loop.send_range(session, settings, digest_id, lo, hi)

    def expected(i: int) -> tuple[DeliveryStatus, int]:
        if (i + 1) % 7 == 0:  # the i-th message is the (i+1)-th MAIL of the connection
            return DeliveryStatus.DEFERRED, 451
        if i % 3 == 0:
            return DeliveryStatus.FAILED, 550
        if i % 5 == 1:
            return DeliveryStatus.DEFERRED, 452
        return DeliveryStatus.SENT, 250

    rows = deliveries_by_email(session, digest_id)
    assert {e: (rows[e].status, rows[e].smtp_code) for e in emails} == {
        e: expected(i) for i, e in enumerate(emails)
    }
    delivered = sorted(r.rcpt_tos[0] for r in smtp_server.received)
    assert delivered == [e for i, e in enumerate(emails) if expected(i)[1] == 250]


@BOTH
def test_a_message_withdrawn_before_its_data_is_never_delivered(smtp_server):
    conn = connect(smtp_server.url)
    try:
        assert (
            send_when(conn, "a@example.org", "b@example.org", MESSAGE, ready=lambda: False) is None
        )
        # Pipelined, the server was already waiting for the message: only hanging up
        # withdraws it. Step by step, RSET does and the connection goes on.
        assert (conn.sock is None) == smtp_server.handler.pipelining
    finally:
        conn.close()
    assert smtp_server.received == []
    again = connect(smtp_server.url)
    try:
        assert send(again, "a@example.org", "c@example.org", MESSAGE).code == 250
    finally:
        again.close()
    assert [r.rcpt_tos for r in smtp_server.received] == [["c@example.org"]]


def test_a_failing_database_write_hangs_up_before_anything_is_delivered(smtp_server):
    """The in-flight marker could not be written: the message must not go, and with
    DATA already accepted only hanging up keeps it from going (a QUIT would be read
    as message text)."""
    smtp_server.handler.pipelining = True

    def database_down() -> bool:
        raise RuntimeError("database unreachable")

    conn = connect(smtp_server.url)
    with pytest.raises(RuntimeError, match="database unreachable"):
        send_when(conn, "a@example.org", "b@example.org", MESSAGE, ready=database_down)
    assert conn.sock is None
    assert smtp_server.received == []


class CancelsMidway(Unlimited):
    """Cancels the edition, as an operator would, just before the sender's sixth message."""

    def __init__(self, settings, digest_id: int) -> None:
        super().__init__()
        self.settings, self.digest_id, self.calls = settings, digest_id, 0

    def acquire(self, before_waiting=None) -> None:
        self.calls += 1
        if self.calls == 6:
            with db.session_factory(self.settings.database)() as other:
                editions_ops.cancel_edition(other, self.digest_id)
                other.commit()
        super().acquire(before_waiting)


@BOTH
def test_rows_cancelled_mid_batch_are_passed_over_and_the_batch_goes_on(
    session, settings, smtp_server
):
    digest_id, lo, hi, emails = sendable_edition(session, settings, 40)
    result = loop.send_range(
        session, settings, digest_id, lo, hi, limiter=CancelsMidway(settings, digest_id)
    )
    # The cancel came before the sixth claim: five went, the sixth onwards are passed over.
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == emails[:5]
    assert (result.sent, result.not_ours) == (5, 35)
    rows = deliveries_by_email(session, digest_id)
    assert {rows[e].status for e in emails[:5]} == {DeliveryStatus.SENT}
    assert {rows[e].status for e in emails[5:]} == {DeliveryStatus.CANCELLED}


def test_the_built_in_sink_and_the_test_server_say_pipelining_only_when_asked():
    for pipelining in (False, True):
        server = start_smtp_server(pipelining=pipelining)
        try:
            conn = connect(server.url)
            assert conn.has_extn("pipelining") == pipelining
            conn.close()
        finally:
            server.stop()
