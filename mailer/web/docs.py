"""The operator API's page (`/docs`, Swagger UI), under a policy of its own.

Every other page may run only our own scripts (`app.SECURITY_HEADERS`). Swagger
UI is FastAPI's page: its script and stylesheet come from a CDN and it starts
with an inline script, so under that policy the page stayed blank. Here the CDN
is allowed for this page alone, and the inline script runs by a nonce made
for each answer; nothing on it comes from outside text (the schema is ours).
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

# Where FastAPI's Swagger UI page loads its script and stylesheet from.
CDN = "https://cdn.jsdelivr.net"


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title=f"{request.app.title}: operator API"
    )
    html = bytes(page.body).decode().replace("<script>", f'<script nonce="{nonce}">')
    policy = (
        f"default-src 'self'; script-src 'self' {CDN} 'nonce-{nonce}'; "
        f"style-src 'self' 'unsafe-inline' {CDN}; img-src 'self' https: data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": policy})
