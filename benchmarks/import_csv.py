"""How fast `mailer subscribers import --confirmed` runs: prints rows/s.

    .venv/bin/python -m benchmarks.import_csv --rows 100000 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/mailer_bench

Without --database-url it makes a scratch PostgreSQL database next to the
test one (TEST_PG_ADMIN_URL, as the tests use), migrates it, measures, and
drops it again. The CSV is generated into a temporary directory first, so
only the import itself is timed (parsing, validation and the writes). It
prints the consent (audit event) and topic rows stored as a check that the
fast path wrote everything, and the load average before and after, because
the machine is shared and the figure moves with it.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from mailer import db, migrate
from mailer.models import Subscription, SubscriptionEvent, SubscriptionTopic
from mailer.readers.importer import import_csv
from mailer.readers.newsletters import create_newsletter, ensure_topic

ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["email", "name", "topics", "frequency"])
        for i in range(rows):
            topics = ("science;culture", "science", "")[i % 3]
            out.writerow([f"Reader.{i}@Example{i % 97}.org", f"Reader {i}", topics, "weekly"])


def measure(url: str, rows: int, chunk: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "readers.csv"
        write_csv(path, rows)
        session = db.session_factory(url)()
        slug = f"bench-{secrets.token_hex(3)}"
        nl = create_newsletter(session, slug, "Bench", "Bench <bench@example.org>")
        ensure_topic(session, nl, "Science")
        ensure_topic(session, nl, "Culture")
        session.commit()
        load = os.getloadavg()[0]
        started = time.perf_counter()
        report = import_csv(session, path, slug, confirmed=True, chunk_size=chunk)
        elapsed = time.perf_counter() - started
        ours = Subscription.newsletter_id == nl.id
        stored = session.scalar(select(func.count()).select_from(Subscription).where(ours))
        events = session.scalar(
            select(func.count()).select_from(SubscriptionEvent).join(Subscription).where(ours)
        )
        topics = session.scalar(
            select(func.count()).select_from(SubscriptionTopic).join(Subscription).where(ours)
        )
        print(
            f"{rows} rows in {elapsed:.2f} s: {rows / elapsed:,.0f} rows/s "
            f"(added {report.added}, already {report.already}, invalid {report.invalid}; "
            f"{stored} subscriptions, {events} consent events, {topics} topic rows stored; "
            f"chunk {chunk}; load {load:.2f} -> {os.getloadavg()[0]:.2f})"
        )
        started = time.perf_counter()
        again = import_csv(session, path, slug, confirmed=True, chunk_size=chunk)
        elapsed = time.perf_counter() - started
        print(f"rerun: {rows / elapsed:,.0f} rows/s (added {again.added}, already {again.already})")
        session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    if args.database_url:
        migrate.upgrade(args.database_url)
        measure(args.database_url, args.rows, args.chunk)
        return
    name = f"mailer_bench_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate.upgrade(url)
        measure(url, args.rows, args.chunk)
    finally:
        db.dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
