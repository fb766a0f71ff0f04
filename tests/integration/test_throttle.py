"""Request counters count per key and window, in Redis and in the database alike."""

from __future__ import annotations

import secrets

import pytest

from mailer.throttle import DatabaseThrottle, RedisThrottle


@pytest.fixture(params=["redis", "database"])
def counters(request, sqlite_url):
    if request.param == "redis":
        request.getfixturevalue("redis_url")
        from tests.conftest import REDIS_URL

        return RedisThrottle(REDIS_URL, prefix=f"mailer:throttle:test-{secrets.token_hex(4)}")
    return DatabaseThrottle(sqlite_url)


def test_requests_over_the_limit_wait_for_the_next_window(counters):
    now = 1_000_000.0  # 40 s into a 60 s window
    verdicts = [counters.hit("ip:192.0.2.1", 3, 60, now=now) for _ in range(5)]
    assert verdicts == [None, None, None, 20, 20]
    assert counters.hit("ip:192.0.2.1", 3, 60, now=now + 20) is None


def test_keys_are_counted_apart(counters):
    now = 1_000_000.0
    for _ in range(3):
        counters.hit("ip:192.0.2.1", 3, 60, now=now)
    assert counters.hit("ip:192.0.2.2", 3, 60, now=now) is None
    assert counters.hit("ip:192.0.2.1", 3, 60, now=now) is not None


def test_a_limit_of_zero_counts_nothing(counters):
    assert all(counters.hit("k", 0, 60, now=1.0) is None for _ in range(10))
