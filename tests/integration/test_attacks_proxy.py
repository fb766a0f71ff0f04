"""`X-Forwarded-For` is believed from MAILER_TRUSTED_PROXIES only, however the web is started.

uvicorn believes it from 127.0.0.1 by default, so a caller on the machine
(or anything relaying for others) could pick the address that the admin
login limit, the subscribe limits and the consent record see. Each test
starts the web the way an operator does, as a real process on a free port:
`mailer web` (also the Dockerfile's and docker-compose's command), the
uvicorn command line `mailer up` runs, and the in-process server the tests
use. Each makes wrong-token logins from 127.0.0.1, each claiming a new
address in `X-Forwarded-For`, past an allowance of 3: with no trusted proxy
the fourth is refused (one caller); with 127.0.0.1 trusted, each claimed
address has an allowance of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mailer import migrate
from mailer.cli.run import web_argv
from mailer.mail.sink import free_port, port_answers

ROOT = Path(__file__).resolve().parents[2]
ALLOWANCE = 3


def logins_claiming_new_addresses(base: str, count: int) -> list[int]:
    codes = []
    with httpx.Client(base_url=base, timeout=10) as http:
        for n in range(count):
            answer = http.post(
                "/admin/login",
                data={"token": "wrong"},
                headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
            )
            codes.append(answer.status_code)
    return codes


def environment(tmp_path: Path, trusted: str) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/mailer.db"
    migrate.upgrade(url)
    return dict(os.environ) | {
        "MAILER_DATA_DIR": str(tmp_path),
        "MAILER_DATABASE_URL": url,
        "MAILER_BROKER_URL": "",  # the request counters in the test's own database
        "MAILER_ADMIN_LOGIN_ATTEMPTS_PER_HOUR": str(ALLOWANCE),
        "MAILER_TRUSTED_PROXIES": trusted,
    }


def mailer_web(port: int) -> list[str]:
    mailer = Path(sys.executable).with_name("mailer")
    return [str(mailer), "web", "--host", "127.0.0.1", "--port", str(port)]


@pytest.fixture(params=["mailer web", "mailer up's uvicorn"])
def started(request, tmp_path) -> Iterator[Callable[[str], str]]:
    def start(trusted: str) -> str:
        port = free_port()
        argv = mailer_web(port) if request.param == "mailer web" else web_argv("127.0.0.1", port)
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=environment(tmp_path / trusted.replace(".", "-") if trusted else tmp_path, trusted),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while not port_answers("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, "the web did not start"
            time.sleep(0.1)
        return f"http://127.0.0.1:{port}"

    procs: list[subprocess.Popen[bytes]] = []
    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def test_forwarded_for_from_an_untrusted_peer_does_not_make_a_new_caller(started, tmp_path):
    (tmp_path / "127-0-0-1").mkdir()  # the second web's own data directory
    assert logins_claiming_new_addresses(started(""), ALLOWANCE + 1) == [401] * ALLOWANCE + [429]
    # The configured proxy is believed: four claimed callers, four allowances.
    assert logins_claiming_new_addresses(started("127.0.0.1"), ALLOWANCE + 1) == [401] * 4


@pytest.fixture
def few_logins(monkeypatch) -> None:
    monkeypatch.setenv("MAILER_ADMIN_LOGIN_ATTEMPTS_PER_HOUR", str(ALLOWANCE))


def test_the_in_process_server_believes_no_one_either(few_logins, live_server):
    assert logins_claiming_new_addresses(live_server, ALLOWANCE + 1) == [401] * ALLOWANCE + [429]


def test_the_container_starts_the_web_with_mailer_web():
    """The Dockerfile's and docker-compose's web command is `mailer web`, tested above."""
    assert 'CMD ["mailer", "web",' in (ROOT / "Dockerfile").read_text()
    assert 'command: ["mailer", "web",' in (ROOT / "docker-compose.yml").read_text()
