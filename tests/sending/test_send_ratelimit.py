"""The global send rate: one schedule of send slots shared by every worker.

The clock is injected, so these tests check the arithmetic of shared slots
without timing anything: two limiters (two workers) asking at the same
instant get slots one interval apart, never the same one.
"""

from __future__ import annotations

import pytest

from mailer.db import get_engine
from mailer.sending.ratelimit import DatabaseLimiter, RedisLimiter, Unlimited, limiter_for
from tests.conftest import RUN_ID, configure


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["redis", "database"])
def make_limiter(request, redis_url, pg_url):
    name = f"test-{RUN_ID}-{request.node.name}"

    def make(rate: float, clock: Clock):
        if request.param == "redis":
            return RedisLimiter(redis_url, name, rate, clock=clock)
        return DatabaseLimiter(get_engine(pg_url), name[:64], rate, clock=clock)

    yield make
    if request.param == "redis":
        import redis

        redis.Redis.from_url(redis_url).delete(name)


def test_two_workers_share_one_rate(make_limiter):
    clock = Clock()
    worker_a, worker_b = make_limiter(10, clock), make_limiter(10, clock)
    waits = [worker_a.reserve(), worker_b.reserve(), worker_a.reserve(), worker_b.reserve()]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_no_second_holds_more_than_the_rate(make_limiter):
    clock = Clock()
    limiters = [make_limiter(5, clock) for _ in range(3)]
    slots = [clock.now + limiters[i % 3].reserve() for i in range(20)]
    for start in slots:
        # Half-open one-second windows; a slot exactly 1 s later belongs to the next.
        assert sum(start <= s < start + 1.0 - 1e-6 for s in slots) <= 5


def test_idle_time_is_not_saved_up_as_a_burst(make_limiter):
    clock = Clock()
    limiter = make_limiter(2, clock)
    assert limiter.reserve() == 0.0
    clock.now += 60  # a minute of silence
    assert [limiter.reserve(), limiter.reserve()] == pytest.approx([0.0, 0.5])


def test_acquire_sleeps_until_its_slot(make_limiter):
    clock = Clock()
    limiter = make_limiter(4, clock)
    slept: list[float] = []
    limiter._sleep = slept.append
    limiter.acquire()
    limiter.acquire()
    assert slept == pytest.approx([0.25])


def test_a_rate_of_zero_or_less_is_refused_by_the_shared_limiters(redis_url, pg_url):
    with pytest.raises(ValueError, match="above zero"):
        RedisLimiter(redis_url, "x", 0)
    with pytest.raises(ValueError, match="above zero"):
        DatabaseLimiter(get_engine(pg_url), "x", -1)


def test_settings_choose_the_limiter(monkeypatch, settings, redis_url):
    assert isinstance(limiter_for(configure(monkeypatch, send_rate="0")), Unlimited)
    assert isinstance(limiter_for(configure(monkeypatch, send_rate="50")), RedisLimiter)
    database_broker = configure(
        monkeypatch, send_rate="50", broker_url=f"sqla+sqlite:///{settings.data_dir}/broker.db"
    )
    assert isinstance(limiter_for(database_broker), DatabaseLimiter)


def test_every_message_of_a_batch_waits_for_its_shared_slot(session, settings, smtp_server):
    from mailer.sending import loop
    from tests.helpers.editions import prepared_edition

    digest_id, ranges, _ = prepared_edition(
        session, settings, [f"r{i}@example.org" for i in range(3)]
    )
    clock = Clock()
    engine, name = get_engine(settings.database), f"batch-{RUN_ID}"
    limiter = DatabaseLimiter(engine, name, 10, clock=clock)
    other_worker = DatabaseLimiter(engine, name, 10, clock=clock)
    assert other_worker.reserve() == 0.0  # another worker took the first slot
    slept: list[float] = []
    limiter._sleep = slept.append

    loop.send_range(session, settings, digest_id, *ranges[0], limiter=limiter)

    assert slept == pytest.approx([0.1, 0.2, 0.3])
    assert len(smtp_server.received) == 3
