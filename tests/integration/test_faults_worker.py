"""Faults under a real `celery -A worker worker` subprocess: nothing lost, nothing doubled.

- SIGKILL while it prepares an edition (the SIGKILL mid-send is in test_send_kill.py);
- its Redis broker killed and restarted on the same port mid-send (a private
  `redis-server`, never the machine's shared one, which other runs use);
- PostgreSQL unreachable for a few seconds mid-send (a CuttableProxy between the
  worker and the shared server);
- and the worker's whole log of a send, with every secret in play, carries none.

Recovery is what production does: the once-a-minute tick (called here every
half second, with a 2 s lease) sweeps expired leases and re-enqueues what the
database says is still owed. Reader counts are small and leases short so the
file runs in well under a minute.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mailer import tasks
from mailer.celery_app import make_celery
from mailer.editions import close, prepare, schedule
from mailer.mail.sink import free_port
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Subscription,
    SubscriptionTopic,
)
from tests.conftest import RUN_ID, configure, wait_for
from tests.helpers.editions import add_article, add_readers_bulk, make_newsletter
from tests.proxy import CuttableProxy
from tests.smtp import SMTPServer, password_check, start_smtp_server
from tests.workers import start_worker, stop

# -- helpers ---------------------------------------------------------------------------------


def tally(session: Session, digest_id: int) -> dict[str, int]:
    session.expire_all()
    return close.counts(session, digest_id)


def per_reader(smtp_server: SMTPServer) -> Counter[str]:
    return Counter(r.rcpt_tos[0] for r in smtp_server.received)


def assert_each_reader_once(smtp_server: SMTPServer, readers: int, in_flight: int) -> None:
    """Every reader got the digest; at most `in_flight` of them (one per SMTP
    connection that died with a message between "." and the reply) got it twice."""
    got = per_reader(smtp_server)
    assert len(got) == readers
    twice = {a: n for a, n in got.items() if n > 1}
    assert len(twice) <= in_flight and set(twice.values()) <= {2}, twice


def assert_sent_means_received(session: Session, smtp_server: SMTPServer, digest_id: int) -> None:
    """Nothing is marked sent that the server did not get: each `sent` row's
    Message-ID is one the SMTP server received."""
    received = {r.message["Message-ID"] for r in smtp_server.received}
    sent_ids = session.scalars(
        select(Delivery.message_id).where(
            Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.SENT
        )
    ).all()
    assert sent_ids and set(sent_ids) <= received


def edition_with_readers(session: Session, readers: int) -> int:
    nl = make_newsletter(session)
    add_readers_bulk(session, nl, readers)
    add_article(session, nl, "Everyone gets this")
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    session.commit()
    return edition.id


def drive_until_sent(
    session: Session, digest_id: int, readers: int, tick=tasks.digest_tick, timeout: float = 90
) -> None:
    def finished() -> bool:
        tick()  # what beat does every minute: recover leases, re-enqueue what is owed
        return tally(session, digest_id).get("sent", 0) == readers

    wait_for(finished, timeout=timeout, interval=0.5)


# -- SIGKILL during prepare ----------------------------------------------------------------


def many_variant_edition(session: Session, readers: int) -> int:
    """Readers with distinct topic sets, so prepare renders hundreds of variants
    and takes long enough to be killed in the middle."""
    nl = make_newsletter(session)
    topics = [f"T{i}" for i in range(12)]
    for i, topic in enumerate(topics):
        add_article(session, nl, f"Story {i}", topics=[topic], hours_ago=1 + i / 10)
    add_readers_bulk(session, nl, readers)
    topic_ids = {t.name: t.id for t in nl.topics}
    subs_ids = session.scalars(select(Subscription.id).order_by(Subscription.id)).all()
    session.execute(
        insert(SubscriptionTopic),
        [
            {"subscription_id": sid, "topic_id": topic_ids[topics[bit]]}
            for n, sid in enumerate(subs_ids, start=1)
            for bit in range(12)
            if n & (1 << bit)
        ],
    )
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    session.commit()
    return edition.id


def preparing(url: str, digest_id: int) -> bool:
    """True while some transaction holds the edition's row lock (prepare does)."""
    engine = create_engine(url, poolclass=None)
    try:
        with engine.connect() as conn:
            conn.execute(text("SET lock_timeout = 0"))
            conn.execute(
                text("SELECT id FROM digest WHERE id = :id FOR UPDATE NOWAIT"), {"id": digest_id}
            )
            conn.rollback()
            return False
    except OperationalError as exc:
        return "lock" in str(exc).lower()
    finally:
        engine.dispose()


@pytest.mark.slow
def test_worker_killed_while_preparing_leaves_nothing_half_made_and_the_edition_completes(
    session, settings, smtp_server, redis_url, tmp_path, monkeypatch
):
    readers = 400
    settings = configure(monkeypatch, send_lease="2", send_batch_size="100")
    digest_id = many_variant_edition(session, readers)
    tasks.app.control.purge()

    first = start_worker(tmp_path, "prep-doomed", settings.queue)
    second = None
    try:
        tasks.prepare_digest.delay(digest_id)
        wait_for(lambda: preparing(settings.database, digest_id), timeout=60, interval=0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        # The killed transaction is rolled back whole: no rows, no variants, not begun.
        wait_for(lambda: not preparing(settings.database, digest_id), timeout=30)
        session.expire_all()
        assert session.get_one(Digest, digest_id).status == "created"
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert smtp_server.received == []

        second = start_worker(tmp_path, "prep-restarted", settings.queue)
        drive_until_sent(session, digest_id, readers)
    finally:
        stop(first, second)

    assert_each_reader_once(smtp_server, readers, in_flight=0)
    assert tally(session, digest_id) == {"sent": readers}
    tasks.digest_tick()
    session.expire_all()
    assert session.get_one(Digest, digest_id).status == "done"
    # Many variants were really made, so the kill did land inside a long prepare.
    assert len({r.message["Subject"] for r in smtp_server.received}) > 1


# -- Redis restarted mid-send ---------------------------------------------------------------


class PrivateRedis:
    """A `redis-server` of the test's own, on a fixed port, that can be killed and
    started again; nothing is persisted, so a restart loses every queued task."""

    def __init__(self, tmp_path: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        if self.password:
            args += ["--requirepass", self.password]
        try:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            from tests.conftest import service_missing

            service_missing("redis-server (to run a private broker)", exc)
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        wait_for(lambda: _pings(client), timeout=10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.mark.slow
def test_redis_restarted_mid_send_the_worker_reconnects_and_every_reader_gets_one_digest(
    session, settings, smtp_server, private_redis, tmp_path, monkeypatch
):
    readers = 400
    settings = configure(monkeypatch, send_lease="2", send_batch_size="50")
    broker = make_celery(settings.model_copy(update={"broker_url": private_redis.url}))
    digest_id = edition_with_readers(session, readers)
    smtp_server.handler.script.delay = 0.005

    def tick() -> None:  # beat's tick, sent through the private broker to the worker
        broker.send_task("mailer.tasks.tick", queue=settings.queue)

    worker = start_worker(tmp_path, "redis", settings.queue, broker_url=private_redis.url)
    try:
        broker.send_task("mailer.tasks.prepare_digest", args=[digest_id], queue=settings.queue)
        wait_for(lambda: len(smtp_server.received) >= 100, timeout=60, interval=0.01)
        private_redis.kill()  # every queued batch task goes with it
        at_kill = len(smtp_server.received)
        assert at_kill < readers, "the broker died too late to test anything"
        wait_for(
            lambda: "Connection to broker lost" in (tmp_path / "redis.log").read_text(),
            timeout=60,
        )
        private_redis.start()
        drive_until_sent(session, digest_id, readers, tick=tick)
        assert worker.poll() is None, "the worker died instead of reconnecting"
    finally:
        stop(worker)
        broker.close()

    assert_each_reader_once(smtp_server, readers, in_flight=0)
    assert tally(session, digest_id) == {"sent": readers}


# -- PostgreSQL unreachable mid-send ------------------------------------------------------------

OUTAGE = 4.0  # seconds; the brief's 10 s behaves the same, every lease (2 s) runs out in it


@pytest.mark.slow
def test_database_unreachable_mid_send_fails_batches_marks_nothing_unsent_and_completes(
    session, settings, smtp_server, redis_url, tmp_path, monkeypatch
):
    readers = 300
    settings = configure(monkeypatch, send_lease="2", send_batch_size="50")
    url = make_url(settings.database)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    digest_id = edition_with_readers(session, readers)
    tasks.app.control.purge()
    smtp_server.handler.script.delay = 0.005

    worker = start_worker(tmp_path, "pg", settings.queue, database_url=through_proxy)
    try:
        tasks.prepare_digest.delay(digest_id)
        wait_for(lambda: len(smtp_server.received) >= 60, timeout=60, interval=0.01)
        proxy.cut()
        at_cut = len(smtp_server.received)
        assert at_cut < readers, "the cut came too late to test anything"
        # While it is down, batches are handed to the worker and fail.
        session.expire_all()
        tasks.enqueue_sends(
            [(digest_id, lo, hi) for lo, hi in prepare.open_ranges(session, digest_id, 50)]
        )
        session.rollback()
        time.sleep(OUTAGE)  # the outage itself, not a wait for a result
        during = len(smtp_server.received)
        proxy.restore()
        drive_until_sent(session, digest_id, readers)
        assert worker.poll() is None, "the worker died with the database"
    finally:
        stop(worker)
        proxy.close()

    log = (tmp_path / "pg.log").read_text()
    assert "OperationalError" in log, "no batch ever met the outage?"
    # With no database nothing can be claimed, so at most the one in-flight
    # message got out after the cut.
    assert during - at_cut <= 1
    assert_each_reader_once(smtp_server, readers, in_flight=1)
    assert_sent_means_received(session, smtp_server, digest_id)
    assert tally(session, digest_id) == {"sent": readers}


# -- secrets never logged -------------------------------------------------------------------------


def start_auth_smtp_server(user: str, password: str) -> SMTPServer:
    """The recording SMTP server, but with AUTH, so the SMTP URL carries a password."""
    return start_smtp_server(authenticator=password_check(user, password), auth_require_tls=False)


@pytest.mark.slow
def test_worker_log_of_a_whole_send_carries_no_secret_and_with_redaction_no_address(
    session, settings, tmp_path, monkeypatch
):
    readers = 60
    secrets = {
        "redis": "RedisPw-" + RUN_ID,
        "postgres": "PgPw-" + RUN_ID,  # the test server trusts local users, so any works
        "smtp": "SmtpPw-" + RUN_ID,
        "key": "SecretKey-" + RUN_ID,
        "token": "ApiToken-" + RUN_ID,
    }
    redis_server = PrivateRedis(tmp_path, password=secrets["redis"])
    redis_server.start()
    smtp = start_auth_smtp_server("mailer", secrets["smtp"])
    db_url = (
        make_url(settings.database)
        .set(password=secrets["postgres"])
        .render_as_string(hide_password=False)
    )
    settings = configure(
        monkeypatch,
        database_url=db_url,
        broker_url=redis_server.url,
        smtp_url=f"smtp://mailer:{secrets['smtp']}@127.0.0.1:{smtp.port}",
        secret_key=secrets["key"],
        api_token=secrets["token"],
        redact_addresses="true",
        log_level="INFO",
        send_lease="2",
    )
    broker = make_celery(settings)
    digest_id = edition_with_readers(session, readers)
    # One reader is refused for good, so the failure path logs too.
    smtp.handler.script.on_rcpt = lambda a: "550 5.1.1 no such user" if "00007" in a else None

    worker = start_worker(tmp_path, "secrets", settings.queue, loglevel="INFO")
    try:
        broker.send_task("mailer.tasks.prepare_digest", args=[digest_id], queue=settings.queue)

        def finished() -> bool:
            broker.send_task("mailer.tasks.tick", queue=settings.queue)
            got = tally(session, digest_id)
            return got.get("sent", 0) + got.get("failed", 0) == readers

        wait_for(finished, timeout=60, interval=0.5)
    finally:
        stop(worker)
        broker.close()
        smtp.stop()
        redis_server.kill()

    log = (tmp_path / "secrets.log").read_text()
    assert "succeeded" in log and "Connected to redis" in log, "the log says nothing at all?"
    assert len(smtp.received) == readers - 1
    for name, secret in secrets.items():
        assert secret not in log, f"the {name} secret is in the worker's log"
    assert "reader000" not in log, "a reader's address is in the log despite redaction"
