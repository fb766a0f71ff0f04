"""keep what the source sent beside the cleaned article

Articles are now cleaned (page furniture, "Also read" boxes, trailing
boilerplate, tracking pixels) by `mailer.content.cleaner` on every path. What the
source sent for the summary and the body is kept in two new columns so an
operator can see what was removed (`mailer article show ID --raw`).

Articles stored before this revision keep their summary and body as they
are: their raw input was never kept, so they are not cleaned again here and
their raw columns stay NULL.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both databases (SQLite 3.35+ drops columns in place): a batch
# rebuild of `article` would, with SQLite's foreign keys on, delete the rows that point
# at it (topics, edition variants) as it drops the old table.


def upgrade() -> None:
    op.add_column("article", sa.Column("raw_summary", sa.Text(), nullable=True))
    op.add_column("article", sa.Column("raw_content", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("article", "raw_content")
    op.drop_column("article", "raw_summary")
