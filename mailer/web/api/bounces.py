"""`POST /api/bounces`: an MTA or an email service reports a bounce or a complaint.

Two bodies, both behind the API bearer token:

- a raw RFC 822 report (any content type but JSON, e.g. `message/rfc822`):
  a DSN or an ARF complaint, acted on only if it carries one of our VERP
  return paths, exactly as if it had come through the bounce mailbox;
- JSON `{"type": "bounce"|"complaint", "email", "status", "diagnostic"}` from
  a service that has already parsed the report; the token is the trust.

The answer is 200 with the outcome (`applied` false when nothing changed,
with the reason), 422 for JSON we can't read, 413 for a body over 5 MiB.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from mailer import jsondata
from mailer.bounces import outcomes
from mailer.mail.verp import return_paths
from mailer.web.deps import APIAuth, SessionDep, SettingsDep

router = APIRouter(
    prefix="/api",
    tags=["bounces"],
    dependencies=[APIAuth],
    responses={
        401: {"description": "Missing or wrong API token"},
        413: {"description": "The report is too large"},
        422: {"description": "JSON that is not a bounce or complaint"},
    },
)

MAX_BODY = 5 * 1024 * 1024


class BounceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    type: Literal["bounce", "complaint"]
    email: str = Field(min_length=3, max_length=320)
    status: str | None = Field(None, max_length=16)
    diagnostic: str | None = Field(None, max_length=2000)


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, f"a report may be at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _event(body: bytes) -> outcomes.BounceEvent:
    try:
        data = BounceIn.model_validate(jsondata.loads(body))
    except (ValueError, ValidationError) as exc:
        detail = exc.errors() if isinstance(exc, ValidationError) else f"invalid JSON: {exc}"
        raise HTTPException(422, detail) from exc
    event = outcomes.BounceEvent(data.type, data.email, data.status, data.diagnostic)
    try:
        event.severity()
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return event


@router.post("/bounces")
async def post_bounce(request: Request, session: SessionDep, settings: SettingsDep) -> JSONResponse:
    body = await _body(request)
    is_json = request.headers.get("content-type", "").split(";")[0].strip() == "application/json"
    limit = settings.soft_bounce_limit

    def handle() -> outcomes.Outcome:
        if is_json:
            outcome = outcomes.handle_event(session, _event(body), soft_limit=limit)
        else:
            verp = return_paths(settings)
            outcome = outcomes.handle_raw(session, verp, body, soft_limit=limit)
        session.commit()
        return outcome

    outcome = await run_in_threadpool(handle)
    return JSONResponse(outcome.as_dict())
