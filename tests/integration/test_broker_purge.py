"""The embedded broker file does not keep every message it ever delivered.

kombu's SQLAlchemy transport (the embedded default's broker,
`sqla+sqlite:///…/broker.db`) marks a delivered message invisible and keeps
it: a year of ticks was ~590 MB and a slower poll. The tick deletes them.
`benchmarks/broker.py` measures the file and the poll with and without.
"""

from __future__ import annotations

import time
from pathlib import Path

from kombu import Connection
from sqlalchemy import create_engine, text

from mailer import broker, migrate
from mailer.celery_app import make_celery
from mailer.config import Settings
from tests.conftest import RUN_ID, wait_for
from tests.workers import start_worker, stop


def rows(url: str) -> tuple[int, int]:
    """(delivered, waiting) messages in the broker file."""
    engine = create_engine(url.removeprefix("sqla+"))
    with engine.connect() as conn:
        found: dict[bool, int] = {
            bool(visible): int(count)
            for visible, count in conn.execute(
                text("SELECT visible, count(*) FROM kombu_message GROUP BY visible")
            )
        }
    engine.dispose()
    return found.get(False, 0), found.get(True, 0)


def test_purge_deletes_what_was_delivered_and_keeps_what_waits(tmp_path: Path) -> None:
    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    settings = Settings(broker_url=url)
    assert broker.purge_consumed(settings) == 0  # a new file without the table yet
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        for n in range(300):
            queue.put({"n": n})
            queue.get(timeout=5).ack()
        queue.put({"n": "waiting"})
        assert rows(url) == (300, 1)

        assert broker.purge_consumed(settings) == 300
        assert rows(url) == (0, 1)
        assert queue.get(timeout=5).payload == {"n": "waiting"}  # still delivered
        queue.close()


def test_a_redis_broker_is_left_alone(settings) -> None:
    assert broker.purge_consumed(settings) == 0


def test_a_worker_running_ticks_on_the_embedded_broker_leaves_no_delivered_rows(
    tmp_path: Path,
) -> None:
    database = f"sqlite:///{tmp_path / 'mailer.db'}"
    migrate.upgrade(database)
    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    queue = f"broker-{RUN_ID}"
    settings = Settings(broker_url=url, database_url=database, queue=queue, data_dir=tmp_path)
    app = make_celery(settings)
    worker = start_worker(
        tmp_path, "embedded", queue, broker_url=url, database_url=database, data_dir=str(tmp_path)
    )
    try:
        for _ in range(20):
            app.send_task("mailer.tasks.tick", queue=queue)
        # All 20 taken (none waiting), and the last tick has run its purge.
        wait_for(lambda: rows(url)[1] == 0, timeout=90, interval=0.2)
        time.sleep(1.0)
        app.send_task("mailer.tasks.tick", queue=queue)
        wait_for(lambda: rows(url) == (0, 0), timeout=60, interval=0.2)
    finally:
        stop(worker)
