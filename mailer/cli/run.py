"""`mailer web`, `mailer worker` and `mailer beat`: one part each, in the foreground.

The command lines `mailer up` starts its children with (`web_argv`,
`celery_worker_argv`, `celery_beat_argv`) are built here, beside the
commands that run the same parts on their own, and `one_line` turns a
failure at start into one line for both. `mailer up`, which supervises all
three, is `mailer.cli.up`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

import click

from mailer import lifeline
from mailer.cli.base import settings_or_exit
from mailer.config import Settings

# `celery -A worker` only works from the repository root, where worker.py is;
# the installed package's module works from anywhere.
CELERY_APP = "mailer.celery_app:app"


@contextlib.contextmanager
def one_line(doing: str, hint: str = "") -> Iterator[None]:
    """Whatever goes wrong while `doing` becomes one line with what to do, not a traceback."""
    from kombu.exceptions import KombuError
    from sqlalchemy.exc import SQLAlchemyError

    from mailer import migrate

    try:
        yield
    except migrate.NotMigrated as exc:
        raise click.ClickException(str(exc)) from exc
    except (SQLAlchemyError, KombuError, OSError, ConnectionError) as exc:
        raise click.ClickException(f"{doing}: {first_line(exc)}{hint}") from exc


def first_line(exc: BaseException) -> str:
    """The gist of an error: its first line, without SQLAlchemy's `(Class)` prefix."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return re.sub(r"^\([\w.]+\)\s*", "", line).rstrip(".")


def celery_worker_argv(settings: Settings, concurrency: int = 1) -> list[str]:
    """Solo pool by default: SQLite has one writer, and it stops cleanly on SIGTERM."""
    pool = "solo" if concurrency <= 1 else "threads"
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        f"--pool={pool}",
        f"--concurrency={max(1, concurrency)}",
        "-Q",
        settings.queue,
        "--loglevel",
        settings.log_level,
        "--without-mingle",
        "--without-gossip",
    ]


def celery_beat_argv(settings: Settings) -> list[str]:
    """The schedule file lives in data_dir, so a second checkout never shares it."""
    schedule = (settings.data_dir / "celerybeat-schedule").resolve()
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "beat",
        "--schedule",
        str(schedule),
        "--loglevel",
        settings.log_level,
    ]


def web_argv(host: str, port: int) -> list[str]:
    from mailer.web.proxies import UVICORN_FLAGS  # uvicorn's own proxy handling off

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "mailer.web.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
        *UVICORN_FLAGS,
    ]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web app (reader pages and operator API)."""
    import uvicorn

    from mailer.web.app import create_app
    from mailer.web.proxies import UVICORN_OPTIONS

    settings = settings_or_exit()
    with one_line("the web app cannot start"):
        app = create_app(settings)
    uvicorn.run(app, host=host, port=port, **UVICORN_OPTIONS)


@click.command()
@click.option(
    "--concurrency", default=1, show_default=True, help="1 = solo pool; more = threads pool."
)
def worker(concurrency: int) -> None:
    """Run a Celery worker on MAILER_QUEUE. The same as `celery -A worker worker`."""
    settings = settings_or_exit()
    argv = celery_worker_argv(settings, concurrency)
    os.execv(argv[0], argv)


@click.command()
def beat() -> None:
    """Run Celery beat, the once-a-minute tick. The same as `celery -A worker beat`.

    Refused while another beat runs on the same MAILER_DATA_DIR: it holds the
    data directory's beat lock for as long as it lives (see mailer.lifeline).
    """
    settings = settings_or_exit()
    try:
        lifeline.hold_beat_lock(settings.data_dir)  # inherited by the exec'd beat
    except lifeline.BeatRunning as exc:
        raise click.ClickException(str(exc)) from exc
    argv = celery_beat_argv(settings)
    os.execv(argv[0], argv)
