"""The benchmark's Celery workers: started as the tick would find them, watched, stopped.

A run that stops moving (a relay that defers everything, a worker that cannot
connect) says why within `STALL_SECONDS` instead of waiting out its timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def start_workers(count: int, queue: str, logdir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        log = (logdir / f"worker{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "mailer.celery_app:app",
                    "worker",
                    "--pool=solo",
                    "-Q",
                    queue,
                    "-n",
                    f"bench{i}-{queue}@%h",
                    "--loglevel=" + os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"),
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                ],
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def wait_ready(app: Any, count: int, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited with {proc.returncode} before it was ready")
        answers = app.control.ping(timeout=0.5)
        if len(answers) >= count:
            return
    raise RuntimeError("the workers did not answer a ping within 60 s")


def stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# Nothing received and no row settled for this long: the run cannot finish (a sink that
# refuses, a worker that cannot connect), so it says why instead of waiting out --timeout.
STALL_SECONDS = 90.0


class Stall:
    """Whether what is watched has stayed the same for `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.seen: object = None
        self.since = time.monotonic()

    def stuck(self, now_seen: object) -> bool:
        if now_seen != self.seen:
            self.seen, self.since = now_seen, time.monotonic()
        return time.monotonic() - self.since > self.seconds


def stalled(session: Any, digest_id: int, logs: Path) -> str:
    """Why a run stopped moving: its rows by status and the latest SMTP reply."""
    from sqlalchemy import func, select

    from mailer.models import Delivery

    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    ).all()
    reply = session.scalar(
        select(Delivery.smtp_reply)
        .where(Delivery.digest_id == digest_id, Delivery.smtp_code.is_not(None))
        .order_by(Delivery.updated_at.desc())
        .limit(1)
    )
    counts = ", ".join(f"{n} {status.value}" for status, n in rows)
    return (
        f"no progress for {STALL_SECONDS:.0f} s: {counts}; latest reply {reply!r}; "
        f"worker logs in {logs}"
    )
