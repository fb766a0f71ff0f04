"""Real `celery -A worker worker` processes for tests that kill, cut or restart them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import RUN_ID

ROOT = Path(__file__).resolve().parents[1]


def start_worker(
    tmp_path: Path, name: str, queue: str, loglevel: str = "WARNING", **env: str
) -> subprocess.Popen[bytes]:
    """A real worker process with the test's MAILER_* settings, some overridden."""
    celery = Path(sys.executable).with_name("celery")
    log = (tmp_path / f"{name}.log").open("ab")
    return subprocess.Popen(
        [
            str(celery),
            "-A",
            "worker",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "-n",
            f"{name}-{RUN_ID}@%h",
            f"--loglevel={loglevel}",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=dict(os.environ) | {f"MAILER_{k.upper()}": v for k, v in env.items()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
