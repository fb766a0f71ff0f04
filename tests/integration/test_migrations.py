"""The migrations build the schema the models describe, and carry data forward."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, select, text

from mailer import migrate
from mailer.editions import prepare, reservations, schedule
from mailer.models import Base, Delivery


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrated_schema_matches_the_models(backend, tmp_path: Path, request) -> None:
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/m.db"
    )
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_upgrade_to_0002_keeps_every_reservation_and_every_release(tmp_path: Path) -> None:
    """A delivery whose sent_article rows exist keeps its articles; one whose rows were
    given back (failed, cancelled) is marked released, so nobody is mailed an article
    twice, or denied one, across the upgrade."""
    url = f"sqlite:///{tmp_path}/old.db"
    migrate.upgrade(url, "0001")
    engine = create_engine(url)
    now = "2026-01-01 08:00:00.000000"
    with engine.begin() as conn:
        run = conn.execute
        run(
            text(
                "INSERT INTO newsletter (id, slug, name, sender, default_frequency, paused, "
                "created_at) VALUES (1, 'n', 'N', 'n@example.org', 'daily', 0, :now)"
            ),
            {"now": now},
        )
        for i in (1, 2):
            run(
                text(
                    "INSERT INTO subscriber (id, email, email_key, created_at) "
                    "VALUES (:i, :e, :e, :now)"
                ),
                {"i": i, "e": f"r{i}@example.org", "now": now},
            )
            run(
                text(
                    "INSERT INTO subscription (id, subscriber_id, newsletter_id, status, "
                    "frequency, generation, created_at, status_changed_at, soft_bounces) "
                    "VALUES (:i, :i, 1, 'active', 'daily', 1, :now, :now, 0)"
                ),
                {"i": i, "now": now},
            )
        for a in (10, 11):
            run(
                text(
                    "INSERT INTO article (id, newsletter_id, source, guid, url, title, summary, "
                    "content_html, published_at, fetched_at, updated_at) VALUES "
                    "(:a, 1, 's', :u, :u, 'T', '', '', :now, :now, :now)"
                ),
                {"a": a, "u": f"https://example.org/{a}", "now": now},
            )
        run(
            text(
                "INSERT INTO digest (id, newsletter_id, frequency, window_start, window_end, "
                "status, created_at, counts) VALUES (5, 1, 'daily', :now, :now, 'done', :now, '{}')"
            ),
            {"now": now},
        )
        run(
            text(
                "INSERT INTO digest_variant (id, digest_id, key, article_ids, subject, html, "
                "text) VALUES (7, 5, 'k', '[10, 11]', 'S', '<p>', 'p')"
            )
        )
        for sub, status in ((1, "sent"), (2, "failed")):
            run(
                text(
                    "INSERT INTO delivery (digest_id, subscription_id, variant_id, status, "
                    "attempts, updated_at) VALUES (5, :s, 7, :st, 1, :now)"
                ),
                {"s": sub, "st": status, "now": now},
            )
        for article in (10, 11):  # only reader 1 still holds them: reader 2's failed
            run(
                text(
                    "INSERT INTO sent_article (subscription_id, article_id, digest_id) "
                    "VALUES (1, :a, 5)"
                ),
                {"a": article},
            )

    migrate.upgrade(url)

    from sqlalchemy.orm import Session

    with Session(engine) as session:
        assert reservations.reserved_articles(session) == {(1, 10), (1, 11)}
        rows = session.execute(select(Delivery.subscription_id, Delivery.released))
        released = {sub_id: flag for sub_id, flag in rows}
        assert released == {1: False, 2: True}
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}
    assert "sent_article" not in tables
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_to_0006_leaves_stored_articles_as_they_were(backend, tmp_path, request) -> None:
    """What sources sent is kept from 0006 on; articles stored before are not cleaned
    again (their raw columns stay empty), and a downgrade keeps them and their topics."""
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/old.db"
    )
    if backend == "postgresql":  # the fixture's database is at head: start over at 0002
        command.downgrade(migrate.alembic_config(url), "0002")
    else:
        migrate.upgrade(url, "0002")
    engine = create_engine(url)
    try:
        _stored_before_0006_stay_as_they_were(engine, url)
    finally:  # the session's PostgreSQL database goes back to head whatever happened
        migrate.upgrade(url)
        engine.dispose()


def _stored_before_0006_stay_as_they_were(engine, url: str) -> None:
    now = "2026-01-01 08:00:00"
    stored = "Search Close this search box. Tensions rise."
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO newsletter (id, slug, name, sender, default_frequency, paused, "
                "created_at) VALUES (1, 'n', 'N', 'n@example.org', 'daily', false, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text("INSERT INTO topic (id, newsletter_id, slug, name) VALUES (3, 1, 'w', 'W')")
        )
        conn.execute(
            text(
                "INSERT INTO article (id, newsletter_id, source, guid, url, title, summary, "
                "content_html, published_at, fetched_at, updated_at) VALUES "
                "(10, 1, 's', 'g', 'https://example.org/a', 'T', :s, '<p>x</p>', :now, :now, :now)"
            ),
            {"s": stored, "now": now},
        )
        conn.execute(text("INSERT INTO article_topic (article_id, topic_id) VALUES (10, 3)"))

    migrate.upgrade(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT summary, raw_summary, raw_content FROM article")).one()
    assert tuple(row) == (stored, None, None)

    command.downgrade(migrate.alembic_config(url), "0002")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT summary FROM article")).scalar_one() == stored
        assert conn.execute(text("SELECT count(*) FROM article_topic")).scalar_one() == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_to_0007_keeps_history_and_makes_due_only_what_never_went_and_is_recent(
    backend, tmp_path, request
) -> None:
    """An article's arrival is when it was first stored; what was sent stays sent;
    never-sent articles published before MAILER_DIGEST_MAX_AGE do not become due,
    a recent one that was never sent (it arrived after its window) does."""
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/old.db"
    )
    if backend == "postgresql":
        command.downgrade(migrate.alembic_config(url), "0006")
    else:
        migrate.upgrade(url, "0006")
    engine = create_engine(url)
    try:
        _history_kept_across_0007(engine, url)
    finally:
        migrate.upgrade(url)
        engine.dispose()


def _history_kept_across_0007(engine, url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.orm import Session

    from mailer.config import Settings
    from mailer.mail.rendering import EmailRenderer
    from mailer.models import Article, Frequency, utcnow

    def stamp(moment: datetime) -> datetime | str:
        naive = moment.astimezone(UTC).replace(tzinfo=None)
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if url.startswith("sqlite") else moment

    now = datetime.now(UTC)
    cut = now - timedelta(hours=3)
    with engine.begin() as conn:
        run = conn.execute
        run(
            text(
                "INSERT INTO newsletter (id, slug, name, sender, default_frequency, paused, "
                "created_at) VALUES (1, 'n', 'N', 'n@example.org', 'daily', false, :t)"
            ),
            {"t": stamp(now - timedelta(days=60))},
        )
        run(
            text(
                "INSERT INTO subscriber (id, email, email_key, created_at) "
                "VALUES (1, 'r@example.org', 'r@example.org', :t)"
            ),
            {"t": stamp(now - timedelta(days=60))},
        )
        run(
            text(
                "INSERT INTO subscription (id, subscriber_id, newsletter_id, status, frequency, "
                "generation, created_at, status_changed_at, soft_bounces, confirmed_at) "
                "VALUES (1, 1, 1, 'active', 'daily', 1, :t, :t, 0, :t)"
            ),
            {"t": stamp(now - timedelta(days=60))},
        )
        # 10: sent; 11: never sent, published and stored a month ago; 12: never sent,
        # published before the last window but stored after it (the bug this fixes).
        for article, published, fetched in (
            (10, now - timedelta(hours=5), now - timedelta(hours=5)),
            (11, now - timedelta(days=30), now - timedelta(days=30)),
            (12, now - timedelta(hours=30), now - timedelta(hours=1)),
        ):
            run(
                text(
                    "INSERT INTO article (id, newsletter_id, source, guid, url, title, summary, "
                    "content_html, published_at, fetched_at, updated_at) VALUES "
                    "(:a, 1, 's', :u, :u, :title, '', '', :p, :f, :f)"
                ),
                {
                    "a": article,
                    "u": f"https://example.org/{article}",
                    "title": f"Article {article}",
                    "p": stamp(published),
                    "f": stamp(fetched),
                },
            )
        run(
            text(
                "INSERT INTO digest (id, newsletter_id, frequency, window_start, window_end, "
                "status, created_at, counts) VALUES (5, 1, 'daily', :s, :e, 'done', :e, '{}')"
            ),
            {"s": stamp(cut - timedelta(days=1)), "e": stamp(cut)},
        )
        run(
            text(
                "INSERT INTO digest_variant (id, digest_id, key, article_ids, subject, html, "
                "text) VALUES (7, 5, 'k', '[10]', 'S', '<p>', 'p')"
            )
        )
        run(text("INSERT INTO variant_article (variant_id, article_id) VALUES (7, 10)"))
        run(
            text(
                "INSERT INTO delivery (digest_id, subscription_id, variant_id, status, "
                "attempts, updated_at, released) VALUES (5, 1, 7, 'sent', 1, :t, false)"
            ),
            {"t": stamp(cut)},
        )

    migrate.upgrade(url)

    with Session(engine) as session:
        rows = {a.id: a for a in session.scalars(select(Article))}
        assert {i: a.arrived_at == a.fetched_at for i, a in rows.items()} == {
            10: True,
            11: True,
            12: True,
        }
        assert rows[11].due_at is None and rows[12].due_at == rows[12].fetched_at
        assert rows[10].story == "example.org/10"
        settings = Settings(database_url=url, secret_key="k" * 32)
        edition = schedule.create_edition(session, 1, Frequency.DAILY, utcnow())
        prepare.prepare(session, settings, EmailRenderer(settings.email_templates), edition.id)
        session.commit()
        assert {a for _, a in reservations.reserved_articles(session, edition.id)} == {12}
