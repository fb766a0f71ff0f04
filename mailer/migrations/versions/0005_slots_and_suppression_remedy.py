"""unforgeable reader slots; suppressions that can be listed and lifted

- `digest_variant.slots`: the secret nonce of the markers where a reader's
  address and links go (`messages.Slots`). Variants rendered before it keep
  NULL, which names the old fixed markers, so an edition in flight across the
  upgrade still sends.
- `suppression.subscriber_id`: the address's subscriber while it exists
  (NULL once erased), so the list can show the address without storing it.
  Filled here for existing entries by hashing the subscribers' addresses.
- `suppression_event`: every lift of an entry, on record.

Revision ID: 0005
Revises: 0004
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 5000


def upgrade() -> None:
    with op.batch_alter_table("digest_variant", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slots", sa.String(length=64), nullable=True))
    with op.batch_alter_table("suppression", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subscriber_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_suppression_subscriber_id", ["subscriber_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_suppression_subscriber_id_subscriber",
            "subscriber",
            ["subscriber_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "suppression_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("suppressed_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lifted_by", sa.String(length=32), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("suppression_event", schema=None) as batch_op:
        batch_op.create_index("ix_suppression_event_address_hash", ["address_hash"], unique=False)

    # Point existing entries at their subscriber, where one still exists: the hash is
    # sha256 of the case-folded address, which is what `email_key` holds.
    bind = op.get_bind()
    wanted = {h for (h,) in bind.execute(sa.text("SELECT address_hash FROM suppression"))}
    if not wanted:
        return
    after = 0
    while True:
        rows = bind.execute(
            sa.text("SELECT id, email_key FROM subscriber WHERE id > :after ORDER BY id LIMIT :n"),
            {"after": after, "n": CHUNK},
        ).all()
        if not rows:
            return
        found = [
            {"sid": sid, "h": digest}
            for sid, key in rows
            if (digest := hashlib.sha256(key.encode()).hexdigest()) in wanted
        ]
        if found:
            bind.execute(
                sa.text("UPDATE suppression SET subscriber_id = :sid WHERE address_hash = :h"),
                found,
            )
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("suppression_event", schema=None) as batch_op:
        batch_op.drop_index("ix_suppression_event_address_hash")
    op.drop_table("suppression_event")
    with op.batch_alter_table("suppression", schema=None) as batch_op:
        batch_op.drop_constraint("fk_suppression_subscriber_id_subscriber", type_="foreignkey")
        batch_op.drop_index("ix_suppression_subscriber_id")
        batch_op.drop_column("subscriber_id")
    with op.batch_alter_table("digest_variant", schema=None) as batch_op:
        batch_op.drop_column("slots")
