"""`/digest/{id}`: an edition in the browser, the "view in browser" link's target.

The page is a variant's shared HTML with the reader's address and links
replaced by neutral stand-ins, so it shows what was sent without saying to
whom: nothing here comes from a delivery row or a subscription.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse

from mailer.editions.errors import DigestError
from mailer.editions.preview import public_html
from mailer.models import MAX_ID
from mailer.web.deps import SessionDep, SettingsDep

router = APIRouter()


@router.get(
    "/digest/{digest_id}",
    response_class=HTMLResponse,
    responses={404: {"description": "No such edition or variant"}},
)
def view_digest(
    digest_id: int, session: SessionDep, settings: SettingsDep, v: str | None = None
) -> HTMLResponse:
    if not 0 < digest_id <= MAX_ID or (v is not None and (len(v) > 64 or not v.isalnum())):
        raise HTTPException(status_code=404, detail="There is no such edition.")
    try:
        page = public_html(session, settings, digest_id, v)
    except DigestError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return HTMLResponse(page, headers={"Cache-Control": "public, max-age=300"})
