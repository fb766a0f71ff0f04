"""Fixed-window request counters shared by every web process.

With a Redis broker the counters live in Redis (INCR + EXPIRE, atomic and
lock-free); otherwise in the database, one upsert per request, which needs no
extra server. The database variant serialises requests that share a key on
that key's row, which is fine for the embedded default but not for a busy
site: that is why Redis is used when it is there. Keys for addresses are
hashed so neither store holds an address.
"""

from __future__ import annotations

import time
from typing import Protocol

import redis
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.db import session_scope
from mailer.models import RateCounter


class Throttle(Protocol):
    def hit(self, key: str, limit: int, window: int, now: float | None = None) -> int | None:
        """Count one request; None when allowed, else the seconds until the window resets."""
        ...


def _verdict(count: int, limit: int, start: int, window: int, now: float) -> int | None:
    return max(1, int(start + window - now)) if count > limit else None


class DatabaseThrottle:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def hit(self, key: str, limit: int, window: int, now: float | None = None) -> int | None:
        if limit <= 0:
            return None
        now = time.time() if now is None else now
        start = int(now // window * window)
        with session_scope(self.database_url) as session:
            insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
            upsert = insert(RateCounter).values(key=key, window_start=start, count=1)
            stmt = upsert.on_conflict_do_update(
                index_elements=["key", "window_start"], set_={"count": RateCounter.count + 1}
            ).returning(RateCounter.count)
            count = int(session.execute(stmt).scalar_one())
        return _verdict(count, limit, start, window, now)


class RedisThrottle:
    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.prefix = prefix

    def hit(self, key: str, limit: int, window: int, now: float | None = None) -> int | None:
        if limit <= 0:
            return None
        now = time.time() if now is None else now
        start = int(now // window * window)
        name = f"{self.prefix}:{key}:{start}"
        pipe = self.client.pipeline()
        pipe.incr(name)
        pipe.expire(name, window + 60)
        count, _ = pipe.execute()
        return _verdict(int(count), limit, start, window, now)


def for_settings(settings: Settings) -> Throttle:
    if settings.broker.startswith(("redis://", "rediss://")):
        return RedisThrottle(settings.broker, prefix=f"mailer:throttle:{settings.queue}")
    return DatabaseThrottle(settings.database)


def forget_before(session: Session, cutoff: float) -> int:
    """Day-old database counters go (Redis keys expire on their own)."""
    result = session.execute(delete(RateCounter).where(RateCounter.window_start < int(cutoff)))
    return int(result.rowcount)  # type: ignore[attr-defined]
