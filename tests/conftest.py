"""Shared fixtures: real PostgreSQL, Redis, SMTP and Celery; no mocks of those layers.

Each test run gets its own PostgreSQL database and its own Celery queue, so
several runs (or developers) on one machine never take each other's rows or
tasks. Under CI=true a missing service fails the run instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

RUN_ID = secrets.token_hex(4)
PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_DATA = Path(tempfile.mkdtemp(prefix="mailer-test-"))

# Settings are read from the environment when mailer modules import: set them first.
os.environ.update(
    {
        "MAILER_ENV": "development",
        "MAILER_BROKER_URL": REDIS_URL,
        "MAILER_QUEUE": f"test-{RUN_ID}",
        "MAILER_SECRET_KEY": "test-secret-key-" + RUN_ID,
        "MAILER_API_TOKEN": "test-api-token",
        "MAILER_DATA_DIR": str(_DATA),
        "MAILER_DATABASE_URL": f"sqlite:///{_DATA}/default.db",
        # rich sizes its tables to the terminal; tests read them whole whatever runs them
        "COLUMNS": "200",
    }
)

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from mailer import config, db, migrate  # noqa: E402
from mailer.mail.sink import free_port, port_answers  # noqa: E402
from mailer.models import Base  # noqa: E402
from tests.fixtures.feedserver import FeedServer  # noqa: E402
from tests.smtp import SMTPServer, start_smtp_server  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (under CI=true a missing service is a failure)")
    pytest.skip(f"{message}; not under CI, so skipped")  # CI fails above instead


# -- PostgreSQL -------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"mailer_test_{RUN_ID}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)
    yield url
    db.dispose_all()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def forget_request_counters() -> None:
    """Request counters live in Redis beside the run's queue; each test starts at zero."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        keys = list(client.scan_iter(f"mailer:throttle:test-{RUN_ID}:*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # the tests that need Redis say so through the redis_url fixture


def truncate_all(url: str) -> None:
    engine = db.get_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    truncate_all(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/mailer.db"
    migrate.upgrade(url)
    return url


# -- Redis --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:
        service_missing("Redis", exc)
    return REDIS_URL


# -- HTTP: feeds and pages ------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FeedServer]:
    """A real HTTP server on a free port answering what each test scripts (feeds, pages)."""
    s = FeedServer()
    yield s
    s.stop()


# -- SMTP ---------------------------------------------------------------------------


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SMTPServer]:
    """Step by step unless a test asks for PIPELINING (indirect parametrisation: True)."""
    server = start_smtp_server(pipelining=getattr(request, "param", False))
    yield server
    server.stop()


# -- settings wired to the real services ----------------------------------------------


def configure(monkeypatch: pytest.MonkeyPatch, **values: str) -> config.Settings:
    for key, value in values.items():
        monkeypatch.setenv(f"MAILER_{key.upper()}", value)
    config.get_settings.cache_clear()
    return config.get_settings()


@pytest.fixture
def allow_private_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test feed and page servers listen on 127.0.0.1, which fetches refuse unless told
    (MAILER_FETCH_ALLOW_PRIVATE). Used by the modules that fetch from them, before settings."""
    monkeypatch.setenv("MAILER_FETCH_ALLOW_PRIVATE", "true")
    config.get_settings.cache_clear()


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def settings(
    monkeypatch: pytest.MonkeyPatch,
    pg_url: str,
    smtp_server: SMTPServer,
    tmp_path: Path,
    web_port: int,
) -> Iterator[config.Settings]:
    """Production-like settings: PostgreSQL, Redis broker, the test SMTP server."""
    forget_request_counters()
    yield configure(
        monkeypatch,
        database_url=pg_url,
        smtp_url=smtp_server.url,
        data_dir=str(tmp_path),
        base_url=f"http://127.0.0.1:{web_port}",
    )
    config.get_settings.cache_clear()


@pytest.fixture
def session(settings: config.Settings) -> Iterator[Session]:
    s = db.session_factory(settings.database)()
    yield s
    s.close()


# -- the operator API in-process ---------------------------------------------------------

API_TOKEN = {"Authorization": "Bearer test-api-token"}


@pytest.fixture
def api(settings: config.Settings) -> Iterator[object]:
    """The app on the test's settings, through FastAPI's TestClient."""
    from fastapi.testclient import TestClient

    from mailer.web.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


# -- a real Celery worker on Redis ------------------------------------------------------


@pytest.fixture
def celery_worker(settings: config.Settings, redis_url: str) -> Iterator[object]:
    from celery.contrib.testing.worker import start_worker

    from mailer.celery_app import app

    app.control.purge()
    with start_worker(
        app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as worker:
        yield worker


# -- the web app over real HTTP ----------------------------------------------------------


@pytest.fixture
def live_server(settings: config.Settings, web_port: int) -> Iterator[str]:
    import uvicorn

    from mailer.web.app import create_app
    from mailer.web.proxies import UVICORN_OPTIONS

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=web_port,
            log_level="warning",
            **UVICORN_OPTIONS,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not port_answers("127.0.0.1", web_port, timeout=1):
        if time.monotonic() > deadline:
            raise RuntimeError("the web app did not start")
        time.sleep(0.05)
    yield settings.base_url
    server.should_exit = True
    thread.join(timeout=10)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its value or fail with the last one."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
        value = predicate()
    return value
