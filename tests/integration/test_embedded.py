"""The embedded default end to end: the real `mailer up`, a reader's whole journey, a clean stop.

Nothing is configured but a data directory and a free sink port, exactly as
a new user runs it: SQLite, kombu's SQLAlchemy broker, the built-in SMTP sink,
and web, worker and beat as separate processes. The mail the reader gets is
read from the sink's Maildir, and every step goes over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from mailer.models import Status, Subscription
from mailer.sink import Outbox, OutboxItem, free_port

START_TIMEOUT = 90.0
MAIL_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
READER = "reader@example.com"

T = TypeVar("T")


def eventually(what: str, probe: Callable[[], T | None], timeout: float, up: Embedded) -> T:
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


def mailer_argv(*args: str) -> list[str]:
    """The installed console script when there is one, else the same entry point via -c."""
    script = Path(sys.executable).with_name("mailer")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from mailer.cli import main; main()", *args]


def descendants(pid: int) -> set[int]:
    """Processes whose parent chain leads to pid (read from /proc, no extra dependency)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Embedded:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    base_url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def mailer(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            mailer_argv(*args), env=self.env, capture_output=True, text=True, timeout=120
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


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    port, sink_port = free_port(), free_port()
    # The embedded default: no database, broker or SMTP settings at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(
        {
            "MAILER_DATA_DIR": str(tmp_path / "data"),
            "MAILER_SINK_PORT": str(sink_port),
            "MAILER_LOG_LEVEL": "INFO",
        }
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            mailer_argv("up", "--port", str(port)),
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = Embedded(proc, env, f"http://127.0.0.1:{port}", tmp_path / "data", log_path)
    family: set[int] = set()
    try:
        eventually("the web app to answer", lambda: _answers(up.base_url), START_TIMEOUT, up)
        family = descendants(proc.pid)
        yield up
    finally:
        if proc.poll() is None:  # the test failed before stopping it: leave nothing behind
            family |= descendants(proc.pid)
            proc.kill()
            proc.wait(timeout=10)
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/outbox", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def link(text: str, base_url: str, path: str) -> str:
    match = re.search(rf"{re.escape(base_url)}/{path}/[A-Za-z0-9._~-]+", text)
    assert match, f"no /{path}/ link in:\n{text}"
    return match.group(0)


def test_a_reader_subscribes_confirms_and_unsubscribes_on_the_embedded_default(
    embedded: Embedded,
) -> None:
    up = embedded
    created = up.mailer(
        "newsletter", "create", "weekly", "--name", "Weekly Notes",
        "--from", "Weekly Notes <news@example.org>",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr

    with httpx.Client(base_url=up.base_url, timeout=30) as http:
        subscribed = http.post(
            "/subscribe",
            data={"email": READER, "newsletter": "weekly", "topics": "", "frequency": "daily"},
        )
        assert subscribed.status_code == 202, subscribed.text

        confirm_mail = eventually(
            "the confirmation mail in the outbox",
            lambda: up.mail_to(READER, "confirm"),
            MAIL_TIMEOUT,
            up,
        )
        confirm_url = link(confirm_mail.body("plain"), up.base_url, "confirm")

        # Opening the link (as a mail scanner would) only shows a button.
        page = http.get(confirm_url)
        assert page.status_code == 200
        assert 'method="post"' in page.text.lower() and ">Confirm<" in page.text
        assert up.subscription_status(READER) is Status.PENDING

        confirmed = http.post(confirm_url)
        assert confirmed.status_code == 200, confirmed.text
        assert up.subscription_status(READER) is Status.ACTIVE

        welcome = eventually(
            "the welcome mail in the outbox",
            lambda: up.mail_to(READER, "welcome"),
            MAIL_TIMEOUT,
            up,
        )
        assert welcome.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        header = str(welcome.message["List-Unsubscribe"])
        one_click = re.search(r"<(https?://[^>]+)>", header)
        assert one_click, header
        assert one_click.group(1).startswith(f"{up.base_url}/unsubscribe/")

        # What a mail client sends for RFC 8058 one-click unsubscribe.
        gone = http.post(
            one_click.group(1),
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert gone.status_code == 200, gone.text
        assert up.subscription_status(READER) is Status.UNSUBSCRIBED

        # The outbox page the operator looks at shows both mails.
        listing = http.get("/outbox", params={"to": READER}).text
        assert confirm_mail.subject in listing and welcome.subject in listing

    family = descendants(up.proc.pid)
    assert len(family) >= 3, f"expected web, worker and beat under mailer up: {family}"
    up.proc.send_signal(signal.SIGTERM)
    try:
        code = up.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mailer up did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM\n{up.log()}")
    assert code == 0, up.log()
    assert not [pid for pid in family if alive(pid)], up.log()
    assert "stopped" in up.log()


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def test_mailer_up_stops_the_rest_and_fails_when_a_child_dies(embedded: Embedded) -> None:
    up = embedded
    family = descendants(up.proc.pid)
    workers = [
        pid for pid in family if "celery" in " ".join(cmdline(pid)) and "worker" in cmdline(pid)
    ]
    assert workers, f"no celery worker under mailer up: {[cmdline(p) for p in family]}"

    os.kill(workers[0], signal.SIGKILL)

    try:
        code = up.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mailer up kept running after its worker died\n{up.log()}")
    assert code != 0, up.log()
    assert "worker exited unexpectedly" in up.log()
    assert not [pid for pid in family if alive(pid)], up.log()


def test_a_command_from_another_shell_links_to_the_web_that_mailer_up_runs(
    embedded: Embedded, tmp_path: Path
) -> None:
    """`mailer up --port P` records its web address in the data directory; `mailer digest
    send` run from another shell (no MAILER_BASE_URL) bakes that address, not the default
    :8000, into the edition's "view in browser" link."""
    up = embedded
    recorded = json.loads((up.data_dir / "up.json").read_text())
    assert recorded["base_url"] == up.base_url and not up.base_url.endswith(":8000")
    assert "MAILER_BASE_URL" not in up.env
    created = up.mailer(
        "newsletter", "create", "weekly", "--name", "Weekly Notes",
        "--from", "Weekly Notes <news@example.org>", "--frequency", "daily",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    readers = tmp_path / "readers.csv"
    readers.write_text(f"email\n{READER}\n")
    imported = up.mailer("subscribers", "import", str(readers), "--confirmed")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    token = (up.data_dir / "api.token").read_text().strip()
    pushed = httpx.post(
        f"{up.base_url}/api/articles",
        json={
            "newsletter": "weekly",
            "url": "https://example.org/story",
            "title": "A story",
            "published_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert pushed.status_code == 200, pushed.text

    sent = up.mailer("digest", "send", "weekly", "--wait", "--timeout", "60")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    mail = eventually("the digest", lambda: up.mail_to(READER, "A story"), MAIL_TIMEOUT, up)
    view = re.search(r'href="([^"]*/digest/\d+[^"]*)"', mail.body("html"))
    assert view, mail.body("html")
    assert view.group(1).startswith(f"{up.base_url}/digest/"), view.group(1)
    assert httpx.get(view.group(1).replace("&amp;", "&"), timeout=30).status_code == 200
