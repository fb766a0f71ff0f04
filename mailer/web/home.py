"""`/`: the first page a person opens. Where to subscribe, where to operate.

It lists the newsletters that take subscriptions (name and subscribe link,
nothing else: no reader counts, no sender addresses) and links to the
admin page, the API docs and, with the built-in sink, the outbox.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from mailer.operators import newsletters as newsletters_ops
from mailer.web.deps import SessionDep, SettingsDep
from mailer.web.pages import page

router = APIRouter(tags=["reader"])


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The newsletters open for subscription, and links for the operator."""
    return page(
        request,
        "home.html",
        newsletters=newsletters_ops.open_newsletters(session),
        outbox=settings.uses_sink,
    )
