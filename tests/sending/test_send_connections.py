"""A worker keeps its SMTP connection from batch to batch, and never loses a message to it."""

from __future__ import annotations

import socket

import pytest

from mailer.mail.transport import Connections, connect
from mailer.models import DeliveryStatus
from mailer.sending import loop
from tests.conftest import configure
from tests.helpers.editions import prepared_edition, row_for

EMAILS = [f"r{i}@example.org" for i in range(4)]


@pytest.fixture
def two_batches(session, settings, monkeypatch):
    """An edition of four readers in two send ranges of two."""
    settings = configure(monkeypatch, send_batch_size="2")
    digest_id, ranges, subs = prepared_edition(session, settings, EMAILS)
    assert len(ranges) == 2
    return settings, digest_id, ranges, list(subs.values())


def send_all(session, settings, digest_id, ranges, connections=None):
    return sum(
        loop.send_range(session, settings, digest_id, lo, hi, connections=connections).sent
        for lo, hi in ranges
    )


def connections_seen(smtp_server) -> int:
    return len({r.peer for r in smtp_server.received})


def test_batches_share_one_kept_connection(session, smtp_server, two_batches):
    settings, digest_id, ranges, _ = two_batches
    kept = Connections(lambda: connect(settings.smtp), keep=True)
    assert send_all(session, settings, digest_id, ranges, kept) == 4
    assert connections_seen(smtp_server) == 1
    kept.close()


def test_without_keeping_each_batch_opens_and_closes_its_own(session, smtp_server, two_batches):
    settings, digest_id, ranges, _ = two_batches
    assert send_all(session, settings, digest_id, ranges) == 4
    assert connections_seen(smtp_server) == 2


def test_a_kept_connection_the_server_dropped_is_replaced_and_nothing_is_lost(
    session, smtp_server, two_batches
):
    settings, digest_id, ranges, subs = two_batches
    opened = []

    def opener():
        opened.append(connect(settings.smtp))
        return opened[-1]

    kept = Connections(opener, keep=True)
    loop.send_range(session, settings, digest_id, *ranges[0], connections=kept)
    opened[0].sock.shutdown(socket.SHUT_RDWR)  # gone while it sat idle
    loop.send_range(session, settings, digest_id, *ranges[1], connections=kept)

    assert len(opened) == 2
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == EMAILS
    rows = [row_for(session, s) for s in subs]
    assert {(r.status, r.attempts) for r in rows} == {(DeliveryStatus.SENT, 1)}
    kept.close()


def test_a_connection_idle_too_long_is_not_used_again(session, smtp_server, two_batches):
    settings, digest_id, ranges, _ = two_batches
    kept = Connections(lambda: connect(settings.smtp), keep=True, max_idle=0.0)
    assert send_all(session, settings, digest_id, ranges, kept) == 4
    assert connections_seen(smtp_server) == 2
    kept.close()


def test_a_batch_that_lost_its_connection_keeps_nothing(session, smtp_server, two_batches):
    settings, digest_id, ranges, _ = two_batches
    opened = []

    def opener():
        opened.append(connect(settings.smtp))
        return opened[-1]

    def drop(address: str) -> str | None:
        if address == EMAILS[1]:
            opened[-1].sock.shutdown(socket.SHUT_RDWR)
        return None

    smtp_server.handler.script.on_rcpt = drop
    kept = Connections(opener, keep=True)
    with pytest.raises(loop.TemporaryFailure):
        loop.send_range(session, settings, digest_id, *ranges[0], connections=kept)
    smtp_server.handler.script.on_rcpt = None
    loop.send_range(session, settings, digest_id, *ranges[1], connections=kept)
    assert len(opened) == 2  # the broken one was not handed out again
    kept.close()
