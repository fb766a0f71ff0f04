"""Who may ask is settled before the request body is read.

FastAPI reads and validates a body before it resolves a route's dependencies,
so with the token check as a dependency alone an anonymous caller had its
JSON parsed (and learnt from a 422 what the route wanted) before being told
401. This middleware answers every request to the operator API without the
right bearer token, and every admin POST (but the login) without a live
session, before a byte of the body is read. The route-level checks stay:
they are what the API schema shows, and the admin ones add the CSRF field.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mailer.web.deps import WRONG_TOKEN, bearer_matches


def wrong_token() -> JSONResponse:
    return JSONResponse(
        {"detail": WRONG_TOKEN}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


class AuthFirst:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        request = Request(scope)
        if path == "/api" or path.startswith("/api/"):
            expected: str = request.app.state.api_token
            if not bearer_matches(request.headers.get("authorization"), expected):
                await wrong_token()(scope, receive, send)
                return
        elif scope["method"] == "POST" and path.startswith("/admin/") and path != "/admin/login":
            from mailer.web.admin import cookie
            from mailer.web.admin import views as admin

            if await run_in_threadpool(cookie.current_session, request) is None:
                refused = await run_in_threadpool(admin.refused, request, None)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)
