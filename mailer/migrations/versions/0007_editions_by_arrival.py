"""editions by arrival: when an article arrived, when each edition was cut

An edition used to take the articles *published* inside its window, so an
article that reached us after the window closed (a feed polled late, a CMS
that dates drafts, an old page imported) went to nobody. From here on an
article is due to a reader in the first edition of their frequency cut after
it arrived (`article.arrived_at`, `article.due_at`, `digest.cut_at`).

An article also keeps its story key (`article.story`: its link without
scheme, www., tracking or end slash), so "has this reader had this story" is
one indexed lookup whichever source or spelling brought it.

Existing rows: an article arrived when it was first stored (`fetched_at`,
which updates never touch); a prepared edition was cut at its window's end.
Articles never sent that were published longer ago than MAILER_DIGEST_MAX_AGE
become history (`due_at` NULL), so the upgrade floods nobody; everything sent
is held by its delivery as before and is never due again. Deliveries given up
longer ago than that age count as returned (their articles are not handed
back now); more recent ones give their articles to the reader's next edition.

Revision ID: 0007
Revises: 0006
"""

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNRETURNED = "released AND NOT returned"


def _max_age() -> timedelta:
    raw = os.environ.get("MAILER_DIGEST_MAX_AGE", "").strip()
    return timedelta(seconds=int(raw) if raw else 604800)


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    op.add_column("article", sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("article", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("article", sa.Column("excluded_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("article", sa.Column("story", sa.String(2000), nullable=True))
    op.add_column("digest", sa.Column("cut_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "delivery",
        sa.Column("returned", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("feed", sa.Column("backfill_days", sa.Integer(), nullable=True))

    # Compared in Python's value, bound as the column type stores it on each database.
    before = datetime.now(UTC) - _max_age()
    stamp = sa.bindparam("before", before, type_=sa.DateTime(timezone=True))
    if sqlite:  # SQLite keeps UTC text without a zone (models.UTCDateTime)
        stamp = sa.bindparam("before", before.replace(tzinfo=None), type_=sa.DateTime())
    op.execute("UPDATE article SET arrived_at = fetched_at, due_at = fetched_at")
    op.execute(
        sa.text(
            "UPDATE article SET due_at = NULL WHERE published_at < :before "
            "AND id NOT IN (SELECT article_id FROM variant_article)"
        ).bindparams(stamp)
    )
    op.execute("UPDATE digest SET cut_at = window_end WHERE status <> 'created'")
    op.execute(
        sa.text(
            "UPDATE delivery SET returned = true WHERE released AND digest_id IN "
            "(SELECT id FROM digest WHERE window_end < :before)"
        ).bindparams(stamp)
    )
    _stories(bind)
    with op.batch_alter_table("article") as batch:
        batch.alter_column("arrived_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.alter_column("story", existing_type=sa.String(2000), nullable=False)
    op.create_index("ix_article_newsletter_due", "article", ["newsletter_id", "due_at"])
    op.create_index("ix_article_newsletter_story", "article", ["newsletter_id", "story"])
    op.create_index(
        "ix_delivery_unreturned",
        "delivery",
        ["subscription_id"],
        postgresql_where=sa.text(UNRETURNED),
        sqlite_where=sa.text(UNRETURNED),
    )


def _stories(bind: sa.Connection) -> None:
    """Each article's story key, by ingest's own rule, a thousand rows at a time."""
    from mailer.canonical import dedupe_key

    article = sa.table("article", sa.column("id", sa.Integer), sa.column("url", sa.String))
    story = sa.table("article", sa.column("id", sa.Integer), sa.column("story", sa.String))
    after = 0
    while True:
        rows = bind.execute(
            sa.select(article.c.id, article.c.url)
            .where(article.c.id > after)
            .order_by(article.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        bind.execute(
            story.update()
            .where(story.c.id == sa.bindparam("rid"))
            .values(story=sa.bindparam("key")),
            [{"rid": rid, "key": dedupe_key(url)[:2000]} for rid, url in rows],
        )
        after = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_delivery_unreturned", table_name="delivery")
    op.drop_index("ix_article_newsletter_story", table_name="article")
    op.drop_index("ix_article_newsletter_due", table_name="article")
    with op.batch_alter_table("article") as batch:
        batch.drop_column("story")
        batch.drop_column("excluded_at")
        batch.drop_column("due_at")
        batch.drop_column("arrived_at")
    op.drop_column("digest", "cut_at")
    op.drop_column("delivery", "returned")
    op.drop_column("feed", "backfill_days")
