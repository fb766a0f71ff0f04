"""Housekeeping for the embedded broker: kombu's SQLAlchemy transport keeps what it delivered.

The transport marks a delivered message `visible = false` and never deletes
it; a message that must go round again (a requeue, a restore at shutdown) is
put in as a new row. Every tick, poll and send task stays in the file for
good: a year of once-a-minute ticks alone is about 590 MB, and the
transport's "next message" query slows with it. The tick deletes the
delivered rows; after a big clear-out (an old file) it vacuums once so the
file shrinks too. Redis needs none of this.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from mailer.config import Settings

PREFIX = "sqla+"
MESSAGE_TABLE = "kombu_message"  # kombu's default `message_tablename`
VACUUM_AFTER = 1000  # rows cleared at once; below this the freed pages are simply reused


@lru_cache(maxsize=4)
def _engine(url: str) -> Engine:
    return create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})


def purge_consumed(settings: Settings) -> int:
    """Delete the messages the transport has delivered; how many went. A no-op off it."""
    if not settings.broker.startswith(PREFIX):
        return 0
    engine = _engine(settings.broker.removeprefix(PREFIX))
    try:
        with engine.begin() as conn:
            gone = conn.execute(text(f"DELETE FROM {MESSAGE_TABLE} WHERE visible = false"))
    except OperationalError as exc:
        if "no such table" in str(exc):  # no message was ever sent through it yet
            return 0
        raise
    count = int(gone.rowcount)
    if count >= VACUUM_AFTER and engine.dialect.name == "sqlite":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM"))
    return count
