"""feeds can be paused, newsletters archived

`feed.paused`: a paused feed is kept (URL, topics, validators) but not
polled until it is resumed. `newsletter.archived_at`: an archived newsletter
takes no subscriptions and makes no editions; every row about it is kept,
and readers can still unsubscribe and read their old mail.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("newsletter", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("archived_at", mailer.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("newsletter", schema=None) as batch_op:
        batch_op.drop_column("archived_at")
    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.drop_column("paused")
