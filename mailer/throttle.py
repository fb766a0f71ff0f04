"""Fixed-window request counters in the database, shared by every web process.

A database counter costs one upsert per request but needs no extra server
and holds across processes and machines, which per-process memory would not.
Keys for addresses are hashed so the table holds no address.
"""

from __future__ import annotations

import time

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.models import RateCounter


def hit(
    session: Session, key: str, limit: int, window: int, now: float | None = None
) -> int | None:
    """Count one request; None when allowed, else the seconds until the window resets."""
    if limit <= 0:
        return None
    now = time.time() if now is None else now
    start = int(now // window * window)
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    upsert = insert(RateCounter).values(key=key, window_start=start, count=1)
    stmt = upsert.on_conflict_do_update(
        index_elements=["key", "window_start"], set_={"count": RateCounter.count + 1}
    ).returning(RateCounter.count)
    count = int(session.execute(stmt).scalar_one())
    if count > limit:
        return max(1, int(start + window - now))
    return None


def forget_before(session: Session, cutoff: float) -> int:
    result = session.execute(delete(RateCounter).where(RateCounter.window_start < int(cutoff)))
    return int(result.rowcount)  # type: ignore[attr-defined]
