"""The Jinja2 environment for server-rendered pages (not email: see mailer/mail/rendering.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from mailer.models import Frequency

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# The forms offer what the model allows, not a second list of it.
templates.env.globals["frequencies"] = [f.value for f in Frequency]


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def message_page(
    request: Request,
    title: str,
    text: str,
    status_code: int = 200,
    *,
    action: str | None = None,
    button: str | None = None,
    hidden: dict[str, str] | None = None,
    method: str = "post",
) -> HTMLResponse:
    """A page that says one thing, optionally with one button that POSTs."""
    return page(
        request,
        "message.html",
        status_code,
        title=title,
        text=text,
        action=action,
        button=button,
        hidden=hidden or {},
        method=method,
    )
