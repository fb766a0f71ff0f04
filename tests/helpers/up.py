"""A real `mailer up` in a subprocess: started with a given environment, waited for,
and never left behind, whatever the test does to it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from mailer.mail.sink import Outbox, OutboxItem
from mailer.models import Status, Subscription
from tests.helpers.processes import alive, descendants, mailer_argv

START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
BANNER = "mailer is up"

T = TypeVar("T")


def without_settings(**settings: str) -> dict[str, str]:
    """This process's environment with no MAILER_* but the ones given (as MAILER_<KEY>)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update({f"MAILER_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    cwd: Path
    base_url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def started(self) -> bool:
        return BANNER in self.log_path.read_text(errors="replace") and answers(self.base_url)

    def mailer(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            mailer_argv(*args),
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def mail_to(self, address: str, subject_has: str) -> OutboxItem | None:
        for item in Outbox(self.data_dir / "outbox").items():
            if address in item.to and subject_has.lower() in item.subject.lower():
                return item
        return None

    def subscription_status(self, address: str) -> Status | None:
        engine = create_engine(f"sqlite:///{self.data_dir / 'mailer.db'}")
        try:
            with Session(engine) as session:
                subs = session.scalars(select(Subscription)).all()
                return next((s.status for s in subs if s.subscriber.email == address), None)
        finally:
            engine.dispose()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mailer up did not stop within {timeout:.0f}s of {sig!r}\n{self.log()}")


def answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def eventually(what: str, probe: Callable[[], T | None], timeout: float, up: Up) -> T:
    """Poll `probe` until it returns something; fail early, with the log, if `up` died."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if up.proc.poll() is not None:
            pytest.fail(f"mailer up exited ({up.proc.returncode}) waiting for {what}\n{up.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s\n{up.log()}")
        time.sleep(0.2)


def start_up(env: dict[str, str], cwd: Path, port: int, log_path: Path, data_dir: Path) -> Up:
    """`mailer up --port PORT` in `cwd`, its output in `log_path`; not waited for."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            mailer_argv("up", "--port", str(port)),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Up(proc, env, cwd, f"http://127.0.0.1:{port}", data_dir, log_path)


@contextmanager
def running(up: Up, timeout: float = START_TIMEOUT) -> Iterator[Up]:
    """Wait until `up` has printed its banner and answers; afterwards leave no process
    of its family alive (a failed test may have left it running, or its children)."""
    family: set[int] = set()
    try:
        eventually("mailer up to start", up.started, timeout, up)
        family = descendants(up.proc.pid)
        yield up
    finally:
        if up.proc.poll() is None:
            family |= descendants(up.proc.pid)
            up.proc.kill()
            up.proc.wait(timeout=10)
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
