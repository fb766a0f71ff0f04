"""Entry point for `celery -A worker worker` and `celery -A worker beat`."""

from mailer.celery_app import app

__all__ = ["app"]
