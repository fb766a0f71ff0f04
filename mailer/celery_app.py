"""The Celery application: broker from settings, late acks, one beat tick a minute.

Late acks plus reject-on-worker-lost mean a task whose worker died is run
again; every task is written to be safe to run twice. Nothing waits in the
broker for long: "later" lives in the database and the tick picks it up.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from celery import Celery
from celery.exceptions import SecurityWarning
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    worker_init,
    worker_ready,
)

from mailer import logs
from mailer.config import Settings, get_settings
from mailer.lifeline import READY_MARKER

TICK_SECONDS = 60.0

# Celery prints an eight-line SecurityWarning when the worker runs as root (it only
# accepts JSON here, so nothing can be unpickled); one log line says it instead.
warnings.filterwarnings("ignore", category=SecurityWarning)


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("mailer", broker=settings.broker, include=["mailer.tasks"])
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "tick": {
                "task": "mailer.tasks.tick",
                "schedule": TICK_SECONDS,
                "options": {"queue": settings.queue},
            },
        },
    )
    if settings.broker.startswith("redis"):
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    return app


app = make_celery()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _scrub_logs(logger: logging.Logger, **_: Any) -> None:
    """Secrets never reach the worker's or beat's logs (see mailer.logs)."""
    logs.install(get_settings(), logger)


@worker_init.connect
def _say_root(**_: Any) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        logging.getLogger("mailer").warning(
            "running as root; in production run the worker as an unprivileged user"
        )


def _supervised(role: str) -> None:
    """Tell `mailer up` this child has started, whatever the log level lets through."""
    if os.environ.get("MAILER_SUPERVISED"):
        # Straight to the descriptor: Celery has redirected sys.stdout into its logger.
        os.write(1, (READY_MARKER.format(role) + "\n").encode())


@worker_ready.connect
def _worker_ready(**_: Any) -> None:
    _supervised("worker")


@beat_init.connect
def _beat_ready(**_: Any) -> None:
    _supervised("beat")
