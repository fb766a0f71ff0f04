"""The send benchmark's small mode counts right: every reader with articles once.

This is a correctness check of benchmarks/send.py (its sink's per-recipient
count against the reader list), not a timing test: the numbers it prints
depend on the machine and are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
READERS = 2000


@pytest.mark.slow
def test_benchmark_small_mode_sends_each_reader_with_articles_exactly_once(redis_url: str) -> None:
    from benchmarks.send import has_articles

    env = dict(os.environ, TEST_PG_ADMIN_URL=PG_ADMIN_URL, TEST_REDIS_URL=REDIS_URL)
    # The benchmark sets its own MAILER_* settings: none of the test run's may leak in.
    for key in [k for k in env if k.startswith("MAILER_")]:
        del env[key]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.send", "--subscribers", str(READERS)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the benchmark did not finish: {exc.stdout!r} {exc.stderr!r}")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = sum(1 for i in range(READERS) if has_articles(i))
    assert 0 < expected < READERS  # some readers have nothing new: the count means something
    assert result["messages"] == expected
    assert result["duplicates"] == 0
    assert result["missing"] == 0
    assert result["unexpected"] == 0
    assert set(result) >= {
        "messages",
        "seconds",
        "msgs_per_s",
        "raw_msgs_per_s",
        "ratio",
        "prepare_s",
        "peak_rss_mb",
    }
