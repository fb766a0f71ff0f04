"""A worker killed with SIGKILL in the middle of a send loses nothing, and stalls nothing for long.

A real `celery -A worker worker` process sends a 2,000-reader edition to the
test SMTP server; it is killed while a batch is going out and started again.
Its claimed rows come back, so every reader ends up with exactly one digest,
except at most the one message in flight on the killed connection, and no
row is left in `sending`. They come back as soon as the worker is known dead
(its sender stops beating: `mailer/sending/senders.py`), not after their lease: the
second test keeps the default 300 s lease and finishes well inside it.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from mailer import tasks
from mailer.celery_app import app
from mailer.editions import close, schedule
from mailer.models import Delivery, DeliveryStatus, Digest, Frequency
from tests.conftest import configure, wait_for
from tests.helpers.editions import add_article, add_readers_bulk, make_newsletter
from tests.workers import start_worker

READERS = 2000


def open_rows(session, digest_id: int) -> dict[str, int]:
    session.expire_all()
    return close.counts(session, digest_id)


@pytest.mark.slow
@pytest.mark.parametrize("lease", ["2", "300"], ids=["lease-2s", "lease-300s-default"])
def test_worker_killed_mid_batch_leaves_each_reader_one_digest_and_nothing_sending(
    session, settings, smtp_server, redis_url, tmp_path, monkeypatch, lease
):
    """With the default 300 s lease the edition still completes within `finished`'s
    90 s: the killed worker's rows are reclaimed when it stops beating (~20 s)."""
    settings = configure(monkeypatch, send_lease=lease, send_batch_size="200")
    nl = make_newsletter(session)
    add_readers_bulk(session, nl, READERS)
    add_article(session, nl, "Everyone gets this")
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    session.commit()
    app.control.purge()
    smtp_server.handler.script.delay = 0.002  # slow enough for the kill to land mid-batch

    first = start_worker(tmp_path, "doomed", settings.queue)
    second = None
    try:
        tasks.prepare_digest.delay(edition.id)
        wait_for(lambda: len(smtp_server.received) >= 523, timeout=60, interval=0.01)
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(timeout=10)
        at_kill = len(smtp_server.received)
        assert at_kill < READERS, "the kill came too late to test anything"
        assert session.scalar(
            select(func.count()).where(
                Delivery.digest_id == edition.id, Delivery.status == DeliveryStatus.SENDING
            )
        ), "the killed worker held no claimed rows"

        second = start_worker(tmp_path, "restarted", settings.queue)

        def finished() -> bool:
            tasks.digest_tick()  # what beat does every minute: recover leases, re-enqueue
            tally = open_rows(session, edition.id)
            return tally.get("sent", 0) == READERS

        wait_for(finished, timeout=90, interval=0.5)
        print(  # the figure docs/reliability.md quotes (pytest -s shows it)
            f"lease {lease} s: {READERS - at_kill} mails after the kill, "
            f"edition complete {time.monotonic() - killed_at:.1f} s after it"
        )
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)

    per_reader = Counter(r.rcpt_tos[0] for r in smtp_server.received)
    assert len(per_reader) == READERS
    duplicates = {a: n for a, n in per_reader.items() if n > 1}
    assert len(duplicates) <= 1 and set(duplicates.values()) <= {2}, duplicates
    assert open_rows(session, edition.id) == {"sent": READERS}
    tasks.digest_tick()
    session.expire_all()
    assert session.get(Digest, edition.id).status == "done"
