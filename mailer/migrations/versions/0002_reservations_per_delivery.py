"""reservations per delivery, not per article

A prepare wrote one `sent_article` row per reader per article (about 600,000
for a 100,000-reader edition: two thirds of its time, mostly foreign-key
checks). What a reader holds is now read from their deliveries: a delivery's
variant's articles (`variant_article`, a few rows per variant) unless the
delivery was given up (`delivery.released`).

Existing reservations carry over: a delivery with a variant whose
`sent_article` rows were given back is marked released.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "variant_article",
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["article.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["variant_id"], ["digest_variant.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("variant_id", "article_id"),
    )
    with op.batch_alter_table("variant_article", schema=None) as batch_op:
        batch_op.create_index("ix_variant_article_article_id", ["article_id"], unique=False)
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("released", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    bind = op.get_bind()
    variants = sa.table(
        "digest_variant", sa.column("id", sa.Integer()), sa.column("article_ids", sa.JSON())
    )
    articles = {row[0] for row in bind.execute(sa.text("SELECT id FROM article"))}
    links = [
        {"variant_id": vid, "article_id": int(aid)}
        for vid, ids in bind.execute(sa.select(variants.c.id, variants.c.article_ids))
        for aid in dict.fromkeys(ids or [])
        if int(aid) in articles
    ]
    if links:
        op.bulk_insert(
            sa.table(
                "variant_article",
                sa.column("variant_id", sa.Integer()),
                sa.column("article_id", sa.Integer()),
            ),
            links,
        )
    bind.execute(
        sa.text(
            "UPDATE delivery SET released = :yes WHERE variant_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM sent_article s WHERE s.digest_id = delivery.digest_id "
            "AND s.subscription_id = delivery.subscription_id)"
        ),
        {"yes": True},
    )
    op.drop_table("sent_article")


def downgrade() -> None:
    op.create_table(
        "sent_article",
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["article.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["digest_id"], ["digest.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscription.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subscription_id", "article_id"),
    )
    op.get_bind().execute(
        sa.text(
            "INSERT INTO sent_article (subscription_id, article_id, digest_id) "
            "SELECT d.subscription_id, va.article_id, MIN(d.digest_id) FROM delivery d "
            "JOIN variant_article va ON va.variant_id = d.variant_id "
            "WHERE d.released = :no GROUP BY d.subscription_id, va.article_id"
        ),
        {"no": False},
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("released")
    with op.batch_alter_table("variant_article", schema=None) as batch_op:
        batch_op.drop_index("ix_variant_article_article_id")
    op.drop_table("variant_article")
