"""The send benchmark's sinks count exactly what they accepted, per recipient.

Both servers of benchmarks/sink.py (aiosmtpd, and Postfix's smtp-sink read
back from its per-message dump files) are held to the same account: a
message counted once per recipient it was accepted for, a repeat counted
again, a transaction the client abandoned after DATA not at all, whole
messages kept for the recipients asked for, and nothing left after a reset.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.sink import SINKS, SMTP_SINK, Sink, start_sink
from mailer.mail.sink import free_port
from tests.conftest import service_missing, wait_for

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n.a line with a dot\r\n"


@pytest.fixture(params=SINKS)
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    if request.param == "postfix" and not Path(SMTP_SINK).exists():
        service_missing("Postfix's smtp-sink", FileNotFoundError(SMTP_SINK))
    started = start_sink(request.param, "127.0.0.1", free_port(), keep={"kept@example.org"})
    try:
        yield started
    finally:
        started.stop()


def abandon_after_data(conn: smtplib.SMTP, rcpt: str) -> None:
    """MAIL, RCPT, DATA, part of the message, then hang up: nothing was delivered."""
    conn.mail("a@example.org")
    conn.rcpt(rcpt)
    conn.putcmd("data")
    assert conn.getreply()[0] == 354
    conn.send(b"Subject: half\r\n\r\nhalf a mess")
    conn.close()


def test_each_recipient_is_counted_once_per_accepted_message_and_abandoned_ones_not(sink):
    conn = smtplib.SMTP(sink.host, sink.port)
    conn.sendmail("a@example.org", ["one@example.org"], MESSAGE)
    conn.sendmail("a@example.org", ["one@example.org"], MESSAGE)  # a duplicate
    conn.sendmail("a@example.org", ["two@example.org", "kept@example.org"], MESSAGE)
    abandon_after_data(conn, "lost@example.org")
    again = smtplib.SMTP(sink.host, sink.port)
    again.sendmail("a@example.org", ["three@example.org"], MESSAGE)
    again.quit()

    assert sink.counts() == {
        "one@example.org": 2,
        "two@example.org": 1,
        "kept@example.org": 1,
        "three@example.org": 1,
    }
    wait_for(lambda: sink.total() == 4)  # messages, whatever their recipients
    assert sink.kept()["kept@example.org"] == [MESSAGE]
    assert set(sink.kept()) == {"kept@example.org"}


def test_a_reset_starts_the_count_again_and_keeps_nothing_more(sink):
    conn = smtplib.SMTP(sink.host, sink.port)
    conn.sendmail("a@example.org", ["kept@example.org"], MESSAGE)
    sink.reset()
    conn.sendmail("a@example.org", ["kept@example.org"], MESSAGE)
    conn.sendmail("a@example.org", ["one@example.org"], MESSAGE)
    conn.quit()
    assert sink.counts() == {"kept@example.org": 1, "one@example.org": 1}
    wait_for(lambda: sink.total() == 2)
    assert sink.kept() == {}
