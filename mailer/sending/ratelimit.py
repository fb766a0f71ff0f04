"""The global send rate, shared by every worker on every machine.

Celery's own `rate_limit` is per worker, so N workers would send N times the
rate. Instead each message reserves the next free send slot in one shared
place: `next = max(stored, now) + 1/rate`, done atomically (a Lua script on
Redis, a single conditional UPDATE in the database). The caller sleeps until
its slot. Slots are spaced 1/rate apart, so however many workers ask, no
second holds more than `rate` (+1 at its edge) messages, and each message
costs one round trip, never a polling loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import case, update
from sqlalchemy.engine import Engine

from mailer.config import Settings
from mailer.db import conflict_insert, get_engine
from mailer.models import SendWindow

Clock = Callable[[], float]

# Slot arithmetic in one step; the key expires when nobody has sent for a while.
_LUA = """
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local slot = stored
if now > slot then slot = now end
redis.call('SET', KEYS[1], tostring(slot + tonumber(ARGV[2])), 'EX', 3600)
return tostring(slot)
"""


class Limiter(Protocol):
    def reserve(self) -> float:
        """Claim the next send slot; returns how many seconds to wait for it."""
        ...

    def acquire(self, before_waiting: Callable[[], None] | None = None) -> None:
        """Take the next send slot, waiting for it; `before_waiting` runs first when
        there is a wait (the sender writes down what it holds before idling)."""
        ...


class _Base:
    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep

    def reserve(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def acquire(self, before_waiting: Callable[[], None] | None = None) -> None:
        wait = self.reserve()
        if wait > 0:
            if before_waiting is not None:
                before_waiting()
            self._sleep(wait)


class Unlimited(_Base):
    def reserve(self) -> float:
        return 0.0


class RedisLimiter(_Base):
    def __init__(
        self, url: str, key: str, rate: float, clock: Clock = time.time, **kw: object
    ) -> None:
        import redis

        super().__init__(**kw)  # type: ignore[arg-type]
        if rate <= 0:
            raise ValueError("a rate limiter needs a rate above zero")
        self._client = redis.Redis.from_url(url)
        self._script = self._client.register_script(_LUA)
        self.key, self.interval, self._clock = key, 1.0 / rate, clock

    def reserve(self) -> float:
        now = self._clock()
        slot = float(self._script(keys=[self.key], args=[repr(now), repr(self.interval)]))
        return max(0.0, slot - now)


class DatabaseLimiter(_Base):
    """The same slots kept in the `send_window` table, for brokers other than Redis."""

    def __init__(
        self, engine: Engine, name: str, rate: float, clock: Clock = time.time, **kw: object
    ) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if rate <= 0:
            raise ValueError("a rate limiter needs a rate above zero")
        self.engine, self.name, self.interval, self._clock = engine, name, 1.0 / rate, clock
        with engine.begin() as conn:
            conn.execute(
                conflict_insert(engine, SendWindow)
                .values(name=name, tokens=0.0, updated=0.0)
                .on_conflict_do_nothing(index_elements=["name"])
            )

    def reserve(self) -> float:
        now = self._clock()
        slot = case((SendWindow.updated > now, SendWindow.updated), else_=now)
        # Its own short transaction: the row lock lasts one statement, not a send.
        with self.engine.begin() as conn:
            new_next = conn.execute(
                update(SendWindow)
                .where(SendWindow.name == self.name)
                .values(updated=slot + self.interval)
                .returning(SendWindow.updated)
            ).scalar_one()
        return max(0.0, float(new_next) - self.interval - now)


_cache: dict[tuple[str, str, float, str], Limiter] = {}
_lock = threading.Lock()


def limiter_for(settings: Settings) -> Limiter:
    """The process's limiter for these settings: Redis when the broker is Redis."""
    rate = settings.send_rate
    key = (settings.broker, settings.database, rate, settings.queue)
    with _lock:
        if key not in _cache:
            name = f"mailer:{settings.queue}:send"
            limiter: Limiter
            if rate <= 0:
                limiter = Unlimited()
            elif settings.broker.startswith(("redis://", "rediss://")):
                limiter = RedisLimiter(settings.broker, name, rate)
            else:
                limiter = DatabaseLimiter(get_engine(settings.database), name[:64], rate)
            _cache[key] = limiter
        return _cache[key]
