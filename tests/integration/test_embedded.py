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
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mailer.mail.sink import free_port
from mailer.models import Status
from tests.helpers.processes import alive, cmdline, descendants
from tests.helpers.up import (
    STOP_TIMEOUT,
    Up,
    answers,
    eventually,
    running,
    start_up,
    without_settings,
)

MAIL_TIMEOUT = 60.0
READER = "reader@example.com"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Up]:
    port, sink_port = free_port(), free_port()
    # The embedded default: no database, broker or SMTP settings at all.
    env = without_settings(
        data_dir=str(tmp_path / "data"), sink_port=str(sink_port), log_level="INFO"
    )
    up = start_up(env, tmp_path, port, tmp_path / "up.log", tmp_path / "data")
    with running(up):
        yield up


def link(text: str, base_url: str, path: str) -> str:
    match = re.search(rf"{re.escape(base_url)}/{path}/[A-Za-z0-9._~-]+", text)
    assert match, f"no /{path}/ link in:\n{text}"
    return match.group(0)


def test_a_reader_subscribes_confirms_and_unsubscribes_on_the_embedded_default(
    embedded: Up,
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
    assert up.stop(signal.SIGTERM) == 0, up.log()
    assert not [pid for pid in family if alive(pid)], up.log()
    assert "stopped" in up.log()


def test_mailer_up_stops_the_rest_and_fails_when_a_child_dies(embedded: Up) -> None:
    up = embedded
    family = descendants(up.proc.pid)
    workers = [
        pid for pid in family if "celery" in " ".join(cmdline(pid)) and "worker" in cmdline(pid)
    ]
    assert workers, f"no celery worker under mailer up: {[cmdline(p) for p in family]}"

    os.kill(workers[0], signal.SIGKILL)

    assert up.stop(0) != 0, up.log()  # signal 0: no signal, only the wait
    assert "worker exited unexpectedly" in up.log()
    assert not [pid for pid in family if alive(pid)], up.log()


def test_a_sigkilled_mailer_up_takes_web_worker_and_beat_with_it(
    embedded: Up, tmp_path: Path
) -> None:
    """Its children used to live on in their own sessions: a restart found the port taken,
    or ran a second worker and a second beat."""
    up = embedded
    family = descendants(up.proc.pid)
    names = {" ".join(cmdline(pid)) for pid in family}
    assert any("uvicorn" in n for n in names) and any(" beat " in n for n in names), names
    os.kill(up.proc.pid, signal.SIGKILL)
    up.proc.wait(timeout=10)

    deadline = time.monotonic() + STOP_TIMEOUT
    while any(alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: cmdline(pid) for pid in family if alive(pid)}
    assert not left, f"still running after mailer up was SIGKILLed: {left}"

    port = int(up.base_url.rsplit(":", 1)[1])
    again = start_up(up.env, up.cwd, port, tmp_path / "again.log", up.data_dir)
    with running(again):  # same port, same data directory: nothing in the way
        assert again.stop() == 0, again.log()


def test_a_second_up_or_beat_on_the_same_data_directory_is_refused_in_one_line(
    embedded: Up,
) -> None:
    up = embedded
    beat = next(pid for pid in descendants(up.proc.pid) if " beat " in " ".join(cmdline(pid)))
    for args in (("up", "--port", str(free_port())), ("beat",)):
        second = up.mailer(*args)
        assert second.returncode != 0, second.stdout + second.stderr
        said = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
        assert len(said) == 1, said
        assert f"another beat (pid {beat}) already runs on the data directory" in said[0]
        assert str(up.data_dir) in said[0]
    assert up.proc.poll() is None and answers(up.base_url)  # the first runs on, untouched
    assert up.stop() == 0, up.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="Celery warns only when run as root")
def test_running_as_root_is_one_line_not_celerys_warning_wall(embedded: Up) -> None:
    log = embedded.log_path.read_text(errors="replace")
    assert "SecurityWarning" not in log and "superuser privileges" not in log, log
    assert log.count("running as root") == 1, log
    assert embedded.stop() == 0


def test_a_command_from_another_shell_links_to_the_web_that_mailer_up_runs(
    embedded: Up, tmp_path: Path
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
