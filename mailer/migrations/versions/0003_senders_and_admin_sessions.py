"""senders that beat, and admin sessions kept on the server

`sender`: a send task's range and its last heartbeat, so the tick can hand
back what a dead worker held as soon as it stops beating, rather than two
leases later. `admin_session`: the live /admin sessions; a cookie whose row
is gone (logged out, expired) is refused.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sender",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("lo", sa.Integer(), nullable=False),
        sa.Column("hi", sa.Integer(), nullable=False),
        sa.Column("seen_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "admin_session",
        sa.Column("sid", sa.String(length=64), nullable=False),
        sa.Column("expires_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid"),
    )


def downgrade() -> None:
    op.drop_table("admin_session")
    op.drop_table("sender")
