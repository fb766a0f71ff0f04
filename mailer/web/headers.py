"""Security headers on every answer, as plain ASGI.

Starlette's `@app.middleware("http")` runs each request through an extra
task and memory streams; at a few hundred requests a second that was a
large share of the web process's CPU. This only adds headers to the
response start message, leaving any a route set itself (the admin preview
sets its own frame-ancestors).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def mail_html_headers(*, framed_by_us: bool) -> dict[str, str]:
    """Headers for a mail's own HTML shown in a browser (previews, the outbox): images
    and inline styles only, no scripts or fetches, sandboxed even if opened directly,
    never cached. `framed_by_us`: our own pages may frame it (the admin's preview
    frame, the outbox); otherwise nothing may."""
    ancestors = "'self'" if framed_by_us else "'none'"
    headers = {
        "Content-Security-Policy": (
            "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
            "font-src https: data:; base-uri 'none'; form-action 'none'; "
            f"frame-ancestors {ancestors}; sandbox allow-popups allow-popups-to-escape-sandbox"
        ),
        "Cache-Control": "no-store",
    }
    if framed_by_us:
        headers["X-Frame-Options"] = "SAMEORIGIN"
    return headers


class SecurityHeaders:
    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
