"""The send benchmark's small mode counts right: every reader with articles once.

This is a correctness check of benchmarks/send.py (its sink's per-recipient
count against the reader list, and with --dkim every received message's
signature verified by dkimpy against the run's key), in each of its modes,
not a timing test: the numbers it prints depend on the machine and are
never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.sink import SMTP_SINK
from benchmarks.workers import Stall, stalled
from mailer.models import DeliveryStatus
from tests.conftest import PG_ADMIN_URL, REDIS_URL, service_missing
from tests.helpers.editions import deliveries_by_email, sendable_edition

ROOT = Path(__file__).resolve().parents[2]
READERS = 2000


def run_benchmark(*flags: str) -> dict[str, Any]:
    env = dict(os.environ, TEST_PG_ADMIN_URL=PG_ADMIN_URL, TEST_REDIS_URL=REDIS_URL)
    # The benchmark sets its own MAILER_* settings: none of the test run's may leak in.
    for key in [k for k in env if k.startswith("MAILER_")]:
        del env[key]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.send", "--subscribers", str(READERS), *flags],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the benchmark did not finish: {exc.stdout!r} {exc.stderr!r}")
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def expected_messages() -> int:
    from benchmarks.population import has_articles

    expected = sum(1 for i in range(READERS) if has_articles(i))
    assert 0 < expected < READERS  # some readers have nothing new: the count means something
    return expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        pytest.param((), id="aiosmtpd"),
        pytest.param(("--dkim", "--verify", "all"), id="aiosmtpd-dkim"),
        pytest.param(("--sink", "postfix", "--dkim", "--verify", "all"), id="postfix-dkim"),
    ],
)
def test_benchmark_small_mode_sends_each_reader_with_articles_exactly_once(
    redis_url: str, flags: tuple[str, ...]
) -> None:
    if "postfix" in flags and not Path(SMTP_SINK).exists():
        service_missing("Postfix's smtp-sink", FileNotFoundError(SMTP_SINK))
    result = run_benchmark(*flags)
    expected = expected_messages()
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
    assert result["sink"] == ("postfix" if "postfix" in flags else "aiosmtpd")
    assert set(result["cpu_ms_per_msg"]) == {"workers", "postgres", "redis", "ours", "sink"}
    assert set(result["send_cpu_ms_per_msg"]) == set(result["cpu_ms_per_msg"])
    parts = result["cpu_ms_per_msg"]
    assert parts["ours"] == pytest.approx(
        parts["workers"] + parts["postgres"] + parts["redis"], abs=0.002
    )
    assert result["dkim"] is ("--dkim" in flags)
    if "--dkim" in flags:
        # Every received message was kept and verified with dkimpy against the run's key.
        assert result["dkim_verified"] == expected
        assert result["dkim_failed"] == 0
        # The raw loop ran a second time signing each message, for comparison.
        signed, raw = result["raw_signed_msgs_per_s"], result["raw_msgs_per_s"]
        assert signed > 0
        assert result["raw_signed_ratio"] == pytest.approx(signed / raw, abs=0.002)
        assert result["ratio_to_signed"] == pytest.approx(result["msgs_per_s"] / signed, abs=0.002)
    else:
        assert "raw_signed_msgs_per_s" not in result


@pytest.mark.slow
def test_benchmark_prepare_only_prepares_every_reader_and_sends_nothing(redis_url: str) -> None:
    result = run_benchmark("--prepare-only")
    assert result["queued"] == expected_messages()
    assert result["queued"] + result["skipped"] == READERS
    assert result["prepare_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["prepare_db_bytes_per_reader"] > 0
    assert "messages" not in result


def test_a_run_that_stops_moving_says_why_instead_of_waiting_out_its_timeout(
    session, settings, tmp_path
) -> None:
    """A relay that defers every message left the benchmark waiting its whole --timeout
    (30 min by default); now 90 s without progress ends it with the rows' states and
    the reply that held them."""
    digest_id, _, _, emails = sendable_edition(session, settings, 3)
    for delivery in deliveries_by_email(session, digest_id).values():
        delivery.status, delivery.smtp_code = DeliveryStatus.DEFERRED, 421
        delivery.smtp_reply = "421 4.3.2 try again later"
    session.commit()

    stall = Stall(seconds=0.05)
    assert not stall.stuck((0, 3))
    time.sleep(0.1)
    assert stall.stuck((0, 3)) and not stall.stuck((1, 3))
    said = stalled(session, digest_id, tmp_path)
    assert f"{len(emails)} deferred" in said and "421 4.3.2 try again later" in said
    assert str(tmp_path) in said
