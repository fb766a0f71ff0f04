"""What an operator's request can be refused with, and why.

Errors carry what a person needs to fix the request: `NotFound` names what is
missing, `Conflict` what is already there or in the way, `Invalid` the field
that is wrong. The API maps them to 404/409/422, the CLI to a message and exit 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mailer.readers import newsletters


class OperatorError(ValueError):
    """A request we refuse; the message is for the operator who made it."""


class NotFound(OperatorError):
    pass


class Conflict(OperatorError):
    pass


class Invalid(OperatorError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@contextmanager
def field_errors() -> Iterator[None]:
    """The store's refusals, tied to the field they are about (422) or a clash (409)."""
    try:
        yield
    except newsletters.NewsletterExists as exc:
        raise Conflict(str(exc)) from exc
    except newsletters.SubscriptionError as exc:
        raise Invalid(exc.field or "body", str(exc)) from exc
