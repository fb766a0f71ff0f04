"""The production shape, run here: docker-compose.yml's own services as processes.

The test reads docker-compose.yml and runs each of its mailer services'
commands (migrate, then web, worker and beat) as separate processes with the
environment the compose file gives them (MAILER_ENV=production), the way
Compose would start them: migrate must finish with status 0 first, web is
ready when its own healthcheck passes. PostgreSQL, Redis and Mailpit are
this machine's PostgreSQL (a database of this run, reached as the compose
file's own `mailer` role), Redis and an aiosmtpd catcher on the address and
port the compose file gives Mailpit's SMTP. A reader then subscribes,
confirms, and gets a digest, every step over HTTP or SMTP.

Nothing about the services is written here twice: a service added to the
compose file, or a setting the code does not know, fails this test.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from mailer.config import Settings
from mailer.mail.sink import free_port
from mailer.models import utcnow
from tests.conftest import PG_ADMIN_URL, REDIS_URL, RUN_ID, wait_for
from tests.helpers import compose
from tests.helpers.processes import alive, descendants
from tests.helpers.time import after_this_minute
from tests.smtp import SMTPServer, start_smtp_server

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# What the compose file runs that is not ours: each has a stand-in here.
STAND_INS = {"postgres", "redis", "mailpit"}
ONE_SHOT = "migrate"  # run to completion before the others, as depends_on says
LONG_RUNNING = ("web", "worker", "beat")
READER = "reader@example.org"
TIMEOUT = 90.0


@pytest.fixture
def compose_database(pg_database: str) -> Iterator[str]:
    """A database of this run owned by the compose file's role, `mailer` (trust auth here,
    so its password is not checked; the role is made once and left for the next run)."""
    name = f"mailer_compose_{RUN_ID}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mailer') "
                "THEN CREATE ROLE mailer LOGIN; END IF; END $$"
            )
        )
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER mailer'))
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def catcher() -> Iterator[SMTPServer]:
    server = start_smtp_server()
    yield server
    server.stop()


def variables() -> dict[str, str]:
    """What a deployer exports before `docker compose up` (the README's command)."""
    return {
        "MAILER_SECRET_KEY": secrets.token_urlsafe(32),
        "MAILER_API_TOKEN": secrets.token_urlsafe(24),
        "MAILER_QUEUE": f"compose-{RUN_ID}",
    }


def test_the_compose_file_names_only_what_this_test_runs_or_stands_in_for():
    spec = compose.load(COMPOSE, variables())
    assert set(spec["services"]) == STAND_INS | {ONE_SHOT, *LONG_RUNNING}, (
        "docker-compose.yml has a service this test does not run: add it to the test"
    )
    known = {f"MAILER_{name.upper()}" for name in Settings.model_fields}
    for name in (ONE_SHOT, *LONG_RUNNING):
        env = spec["services"][name]["environment"]
        assert set(env) <= known, f"{name}: settings the code does not read: {set(env) - known}"
        assert env["MAILER_ENV"] == "production"
    with pytest.raises(compose.MissingVariable, match="MAILER_SECRET_KEY"):
        compose.load(COMPOSE, {})  # the file refuses to start without the secrets


def link(body: str, base_url: str, path: str) -> str:
    found = re.search(rf"{re.escape(base_url)}/{path}/[A-Za-z0-9._~-]+", body)
    assert found, f"no /{path}/ link in:\n{body}"
    return found.group(0)


def test_subscribe_confirm_and_digest_through_the_compose_services(
    tmp_path, compose_database, redis_url, catcher
):
    given = variables()
    web_port = free_port()
    given["MAILER_BASE_URL"] = f"http://127.0.0.1:{web_port}"
    spec = compose.load(COMPOSE, given)
    pg = PG_ADMIN_URL.rsplit("@", 1)[1].split("/", 1)[0]
    redis = REDIS_URL.rsplit("//", 1)[1].split("/", 1)[0]
    hosts = {
        "postgres": compose.StandIn(*_host_port(pg), path=f"/{compose_database}"),
        "redis": compose.StandIn(*_host_port(redis)),
        "mailpit": compose.StandIn(catcher.host, catcher.port),
    }
    published = {
        int(inside): web_port
        for inside in (p.rsplit(":", 1)[1] for p in spec["services"]["web"]["ports"])
    }
    procs: list[subprocess.Popen[bytes]] = []

    def run(name: str) -> subprocess.Popen[bytes]:
        service_spec = spec["services"][name]
        # Each container has its own /var/lib/mailer; a named volume is a directory here.
        replace = {"0.0.0.0": "127.0.0.1", "/var/lib/mailer": str(tmp_path / name)}
        for volume in service_spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            replace[target] = str(tmp_path / source)
        for place in replace.values():
            if place.startswith("/"):
                Path(place).mkdir(parents=True, exist_ok=True)
        svc = compose.service(name, service_spec, hosts=hosts, replace=replace, ports=published)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")} | svc.env
        log = (tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            svc.argv,
            cwd=ROOT,  # the image's WORKDIR, where worker.py is
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        if svc.healthcheck:
            checks[name] = (svc.healthcheck, env)
        return proc

    def logs() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(tmp_path.glob("*.log"))
        )

    checks: dict[str, tuple[list[str], dict[str, str]]] = {}
    try:
        migrate = run(ONE_SHOT)
        assert migrate.wait(timeout=TIMEOUT) == 0, logs()
        for name in LONG_RUNNING:
            run(name)

        def healthy() -> bool:
            argv, env = checks["web"]
            done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=30)
            return done.returncode == 0

        try:
            wait_for(healthy, timeout=TIMEOUT, interval=1)
        except AssertionError:
            pytest.fail(f"web never passed its healthcheck\n{logs()}")
        journey(given, catcher, logs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                family = descendants(proc.pid)
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                for pid in family:
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)


def _host_port(netloc: str) -> tuple[str, int]:
    host, _, port = netloc.rpartition(":")
    return host, int(port)


def journey(given: dict[str, str], catcher: SMTPServer, logs) -> None:
    base = given["MAILER_BASE_URL"]
    api = {"Authorization": f"Bearer {given['MAILER_API_TOKEN']}"}

    def mail(subject_has: str) -> str:
        def found() -> str | None:
            for item in catcher.to(READER):
                if subject_has.lower() in str(item.message["Subject"]).lower():
                    body = item.message.get_body(("plain",))
                    assert body is not None
                    return str(body.get_content())
            return None

        try:
            return wait_for(found, timeout=TIMEOUT, interval=0.3)
        except AssertionError:
            pytest.fail(f"no '{subject_has}' mail for {READER}\n{logs()}")

    with httpx.Client(base_url=base, timeout=30) as http:
        made = http.post(
            "/api/newsletters",
            headers=api,
            json={"slug": "daily", "name": "The Daily", "sender": "Daily <daily@example.org>",
                  "default_frequency": "daily"},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        joined = http.post("/subscribe", data={"email": READER, "newsletter": "daily"})
        assert joined.status_code == 202, joined.text
        confirm = link(mail("confirm"), base, "confirm")
        assert http.post(confirm).status_code == 200
        mail("welcome")

        pushed = http.post(
            "/api/articles",
            headers=api,
            json={
                "newsletter": "daily",
                "url": "https://daily.example.org/first",
                "title": "The first story of the compose run",
                "summary": "What happened today.",
                "published_at": (utcnow() - timedelta(hours=1)).isoformat(),
            },
        )
        assert pushed.status_code == 200, pushed.text
        after_this_minute()  # an edition ends at a whole minute: let this one be past
        sent = http.post("/api/newsletters/daily/editions", headers=api)
        assert sent.status_code == 202, sent.text
        edition = sent.json()["edition"]["id"]

        def done() -> dict | None:
            state = http.get(f"/api/editions/{edition}", headers=api).json()
            return state if state["status"] == "done" else None

        try:
            finished = wait_for(done, timeout=TIMEOUT, interval=0.5)
        except AssertionError:
            pytest.fail(f"edition {edition} did not finish\n{logs()}")
        assert finished["counts"] == {"sent": 1}, finished
    assert "The first story of the compose run" in mail("The Daily: The first story")
