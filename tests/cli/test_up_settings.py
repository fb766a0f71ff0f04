"""`mailer up` starts in every combination of the settings a deployment sets, and
anything that stops it at start is one line saying what to do, never a traceback.

The combinations are covered pairwise (every pair of values of any two settings
appears in some run; allpairspy chooses the runs), each a real `mailer up`
subprocess in a fresh working directory, checked by a reader's first steps:
the API takes the token, a subscribe request is answered, the confirmation
mail arrives (in the outbox or at the test SMTP server), and SIGTERM stops it
with status 0. Runs go four at a time.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from allpairspy import AllPairs
from sqlalchemy import create_engine, text

from mailer.cli.up import failure_reason
from mailer.mail.sink import free_port
from tests.conftest import PG_ADMIN_URL, REDIS_URL, RUN_ID
from tests.helpers.processes import mailer_argv
from tests.helpers.up import eventually, running, start_up, without_settings
from tests.smtp import SMTPServer, start_smtp_server

TOKEN = "a-test-api-token-of-24-characters"
MAIL_TIMEOUT = 90.0

FACTORS = {
    "database_url": ["unset", "sqlite-absolute-new-dir", "sqlite-relative", "postgresql"],
    # unset is relative and new: `var` in the working directory, like any relative path
    "data_dir": ["unset", "absolute-new", "absolute-existing"],
    "broker_url": ["unset", "sqlite-relative-new-dir", "redis"],
    "smtp_url": ["unset", "relay"],
    "secret_key": ["unset", "set"],
    "api_token": ["unset", "set"],
}


@dataclass(frozen=True)
class Run:
    number: int
    choice: dict[str, str]

    def __str__(self) -> str:
        return f"run {self.number}: " + ", ".join(f"{k}={v}" for k, v in self.choice.items())


# The combination issue 18 reported: a SQLite URL in a directory of its own, the secrets
# set (so nothing generates them into the data dir), no data dir, the embedded broker.
# Before the fix: `sqlite3.OperationalError: unable to open database file` (broker.db).
REPORTED = {
    "database_url": "sqlite-absolute-new-dir",
    "data_dir": "unset",
    "broker_url": "unset",
    "smtp_url": "relay",
    "secret_key": "set",
    "api_token": "set",
}


def runs() -> list[Run]:
    names = list(FACTORS)
    pairs = [dict(zip(names, values, strict=True)) for values in AllPairs(list(FACTORS.values()))]
    if REPORTED not in pairs:
        pairs.append(REPORTED)
    return [Run(i, choice) for i, choice in enumerate(pairs)]


@dataclass
class Place:
    """Where a run works and what its settings resolve to."""

    cwd: Path
    settings: dict[str, str]
    data_dir: Path


def place(run: Run, root: Path, pg_url: str, relay: SMTPServer) -> Place:
    cwd = root / f"run{run.number}"
    cwd.mkdir()
    c = run.choice
    settings = {"queue": f"up-{RUN_ID}-{run.number}", "log_level": "INFO"}
    data_dir = {
        "unset": cwd / "var",
        "absolute-new": cwd / "abs" / "new" / "data",
        "absolute-existing": cwd / "existing",
    }[c["data_dir"]]
    if c["data_dir"] == "absolute-existing":
        data_dir.mkdir()
    if c["data_dir"] != "unset":
        settings["data_dir"] = str(data_dir)
    settings["database_url"] = {
        "unset": "",
        "sqlite-absolute-new-dir": f"sqlite:///{cwd}/db/new/mailer.db",
        "sqlite-relative": "sqlite:///db/mailer.db",
        "postgresql": pg_url,
    }[c["database_url"]]
    settings["broker_url"] = {
        "unset": "",
        "sqlite-relative-new-dir": "sqla+sqlite:///brokers/new/broker.db",
        "redis": REDIS_URL,
    }[c["broker_url"]]
    if c["smtp_url"] == "relay":
        settings["smtp_url"] = relay.url
    else:
        settings["sink_port"] = str(free_port())
    if c["secret_key"] == "set":
        settings["secret_key"] = f"secret-{RUN_ID}-{run.number}"
    if c["api_token"] == "set":
        settings["api_token"] = TOKEN
    return Place(cwd, {k: v for k, v in settings.items() if v}, data_dir)


def first_steps(run: Run, where: Place, relay: SMTPServer) -> None:
    """Start, take the API token, subscribe, receive the confirmation, stop cleanly."""
    env = without_settings(**where.settings)
    up = start_up(env, where.cwd, free_port(), where.cwd / "up.log", where.data_dir)
    with running(up):
        token = TOKEN if "api_token" in where.settings else _read(where.data_dir / "api.token")
        slug, reader = f"n{run.number}", f"reader{run.number}@example.org"
        with httpx.Client(base_url=up.base_url, timeout=30) as http:
            made = http.post(
                "/api/newsletters",
                headers={"Authorization": f"Bearer {token}"},
                json={"slug": slug, "name": f"News {run.number}", "sender": "N <n@example.org>"},
            )
            assert made.status_code == 201, f"{made.status_code} {made.text}\n{up.log()}"
            joined = http.post("/subscribe", json={"email": reader, "newsletter": slug})
            assert joined.status_code == 202, joined.text
        arrived: Callable[[], object] = (
            (lambda: relay.to(reader))
            if "smtp_url" in where.settings
            else (lambda: up.mail_to(reader, "confirm"))
        )
        eventually(f"the confirmation mail to {reader}", arrived, MAIL_TIMEOUT, up)
        assert up.stop() == 0, up.log()


def _read(path: Path) -> str:
    assert path.is_file(), f"no generated API token at {path}"
    return path.read_text().strip()


@pytest.fixture
def relay() -> Iterator[SMTPServer]:
    server = start_smtp_server()
    yield server
    server.stop()


def test_mailer_up_starts_and_works_in_every_pair_of_settings(
    tmp_path, pg_database, redis_url, relay
):
    plan = runs()
    assert len(plan) < 20  # pairwise, not the full product of 576
    failures: list[str] = []

    def attempt(run: Run) -> None:
        try:
            first_steps(run, place(run, tmp_path, pg_database, relay), relay)
        except BaseException as exc:  # pytest.fail raises a BaseException
            failures.append(f"{run}\n{exc}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(attempt, plan))
    assert not failures, "\n\n".join(failures)


# -- start failures: one line, what to do, non-zero ---------------------------------------


def up_once(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`mailer up` expected to refuse: it must do so quickly, in one line."""
    env = without_settings(**{"data_dir": str(tmp_path / "data"), **settings})
    done = subprocess.run(
        mailer_argv("up", "--port", str(free_port()), *args),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one line that says what is wrong (progress lines before it are fine)."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], done.stderr
    assert lines[-1].startswith("Error: ")
    return lines[-1]


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"sink_port": "abc"}, "MAILER_SINK_PORT: Input should be a valid integer"),
        ({"log_level": "LOUD"}, "MAILER_LOG_LEVEL"),
        ({"env": "staging"}, "MAILER_ENV"),
        ({"smtp_url": "http://relay.example"}, "must start with smtp:// or smtps://"),
        ({"templates_dir": "/nonexistent/templates"}, "MAILER_TEMPLATES_DIR"),
        ({"env": "production"}, "MAILER_SECRET_KEY is not set"),
        ({"data_dir": "/proc/mailer"}, "set MAILER_DATA_DIR to a directory this user can write"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path, settings, says):
    assert says in refusal(up_once(tmp_path, **settings))


def test_an_unreachable_database_is_one_line_naming_it(tmp_path):
    url = f"postgresql+psycopg://mailer:secret-pw@127.0.0.1:{free_port()}/mailer"  # no server
    line = refusal(up_once(tmp_path, database_url=url))
    assert "cannot reach the database at postgresql+psycopg://mailer:***@127.0.0.1" in line
    assert "secret-pw" not in line and "MAILER_DATABASE_URL" in line


def test_an_unmigrated_postgresql_is_refused_with_the_command(tmp_path, pg_database):
    name = f"mailer_unmigrated_{RUN_ID}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        line = refusal(up_once(tmp_path, database_url=url))
        assert "the database is at migration none" in line and "mailer db upgrade" in line
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_an_unreachable_broker_is_one_line_naming_it(tmp_path):
    line = refusal(up_once(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert "cannot reach the broker at redis://127.0.0.1" in line
    assert "leave MAILER_BROKER_URL empty for the embedded broker" in line


def test_a_taken_port_is_one_line_saying_what_to_pass(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = without_settings(data_dir=str(tmp_path / "data"))
        done = subprocess.run(
            mailer_argv("up", "--port", str(port)),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert refusal(done) == f"Error: 127.0.0.1:{port} is in use; pass --port"


def test_a_child_that_dies_at_start_is_summed_up_from_its_last_words(tmp_path):
    """What a child said before it died, cut to the line that explains it: here the
    web child's own refusal of an un-migrated database (the supervisor migrates first,
    so this is the web child run alone, as `mailer up` runs it)."""
    from mailer.cli.run import web_argv
    from mailer.cli.up import Child, Supervisor

    env = without_settings(
        data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path}/empty.db", secret_key="k"
    )
    web = Child("web", web_argv("127.0.0.1", free_port()))
    supervisor = Supervisor([web], env, open(tmp_path / "out.log", "w"))  # noqa: SIM115
    supervisor.start()
    try:
        assert web.proc is not None and web.proc.wait(timeout=60) != 0
        assert web.pump is not None
        web.pump.join(timeout=10)
    finally:
        supervisor.stop_all(timeout=5)
    assert (tmp_path / "out.log").read_text() == ""  # held back, not printed
    reason = failure_reason(web.tail)
    assert reason.startswith("NotMigrated: the database is at migration none"), list(web.tail)
    assert "run `mailer db upgrade`" in reason


def test_up_refuses_a_second_start_before_touching_anything(tmp_path):
    """The lock is checked before migrating or starting a sink (see test_embedded for
    the real second `mailer up`); here a beat lock held by this test process."""
    from mailer import lifeline

    data = tmp_path / "data"
    fd = lifeline.hold_beat_lock(data)
    try:
        line = refusal(up_once(tmp_path, data_dir=str(data)))
    finally:
        os.close(fd)
    assert "another beat (pid " in line and str(data) in line
    assert not (data / "mailer.db").exists()
