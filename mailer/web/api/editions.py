"""Editions in the operator API: preview, send now, watch, cancel, deliveries.

Same rules as the rest of /api (see core.py): the bearer token first, then the
handler; refusals are JSON a person can act on. Every route calls one
`operators` function, the one the CLI and the admin page call too. "Send
now" commits the edition before its prepare task is enqueued, so a worker
never looks for an edition that is not there yet.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from mailer import tasks
from mailer.models import DeliveryStatus, Frequency
from mailer.operators import editions as editions_ops
from mailer.operators.editions import (
    CancelReport,
    DeliveryPage,
    EditionOut,
    EditionPage,
    SendNowOut,
)
from mailer.web.api.core import CONFLICT, NOT_FOUND, OperatorRoute
from mailer.web.deps import APIAuth, SessionDep, SettingsDep, get_renderer
from mailer.web.headers import mail_html_headers

router = APIRouter(
    prefix="/api",
    dependencies=[APIAuth],
    route_class=OperatorRoute,
    tags=["editions"],
    responses={
        400: {"description": "The body is not valid JSON"},
        401: {"description": "Missing or wrong API token"},
        422: {"description": "A field is wrong; `detail[0].loc` names it"},
    },
)

# The preview is mail HTML, for an API client: nothing may frame it.
PREVIEW_HEADERS = mail_html_headers(framed_by_us=False)


class SendNowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frequency: Frequency | None = None


@router.get(
    "/newsletters/{slug}/preview",
    response_class=HTMLResponse,
    responses={**NOT_FOUND, 409: {"description": "Nothing new: no mail would be sent"}},
)
def preview(
    slug: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    frequency: Frequency | None = None,
    subscriber: Annotated[str | None, Query(description="id or address of one reader")] = None,
) -> HTMLResponse:
    """The next edition's HTML as that reader (or an all-topics newcomer) would get it.

    Nothing is recorded: no edition, no delivery, no reservation.
    """
    found = editions_ops.preview_edition(
        session,
        settings,
        get_renderer(request),
        slug,
        frequency=frequency,
        subscriber=subscriber,
    )
    session.rollback()
    return HTMLResponse(found.html, headers=PREVIEW_HEADERS)


@router.post(
    "/newsletters/{slug}/editions",
    status_code=202,
    response_model=SendNowOut,
    responses=NOT_FOUND,
)
def send_now(slug: str, session: SessionDep, body: SendNowIn | None = None) -> Any:
    """Make the edition ending this minute and hand it to the workers.

    A second call in the same minute answers with the same edition (`new: false`)
    and enqueues nothing more. Watch it with GET /api/editions/{id}.
    """
    digest, new = editions_ops.send_now(session, slug, body.frequency if body else None)
    out = SendNowOut(edition=editions_ops.edition_out(session, digest.id), new=new)
    session.commit()
    if new:
        tasks.enqueue_prepare([digest.id])
    return JSONResponse(out.model_dump(mode="json"), status_code=202)


@router.get("/newsletters/{slug}/editions", response_model=EditionPage, responses=NOT_FOUND)
def list_editions(
    slug: str,
    session: SessionDep,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> Any:
    """Newest first, with live delivery counts; follow `next_cursor` until it is null."""
    return editions_ops.list_editions(session, slug, cursor=cursor, limit=limit)


@router.get("/editions/{digest_id}", response_model=EditionOut, responses=NOT_FOUND)
def get_edition(digest_id: int, session: SessionDep) -> Any:
    """Status (created, sending, done, cancelled) and delivery counts as they are now."""
    return editions_ops.edition_out(session, digest_id)


@router.post(
    "/editions/{digest_id}/cancel",
    response_model=CancelReport,
    responses={**NOT_FOUND, **CONFLICT},
)
def cancel_edition(digest_id: int, session: SessionDep) -> Any:
    """Stop sending: queued and deferred deliveries become `cancelled` (their readers get
    those articles next time); rows already being sent finish normally. Safe to repeat."""
    report = editions_ops.cancel_edition(session, digest_id)
    session.commit()
    return report


@router.get("/editions/{digest_id}/deliveries", response_model=DeliveryPage, responses=NOT_FOUND)
def list_deliveries(
    digest_id: int,
    session: SessionDep,
    status: Annotated[
        list[DeliveryStatus] | None, Query(description="repeat to allow several")
    ] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Who got what: address, status, attempts, the server's reply, Message-ID, sent_at."""
    return editions_ops.list_deliveries(
        session, digest_id, statuses=status or (), cursor=cursor, limit=limit
    )
