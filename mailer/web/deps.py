"""Request-scoped pieces shared by the routes: session, settings, caller's IP, API auth, renderer.

The token check here is the one the `auth` middleware uses too, so `auth` imports
this module and no route module imports `auth`: the web has no import circle.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.db import session_factory
from mailer.mail.rendering import EmailRenderer
from mailer.mail.tokens import Tokens

# Light dependencies are `async def`: FastAPI runs a plain `def` dependency in the
# thread pool, and a thread hop per dependency per request is real CPU at load.


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.database)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_tokens(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


TokensDep = Annotated[Tokens, Depends(get_tokens)]


async def client_ip(request: Request) -> str | None:
    """The caller's address. `X-Forwarded-For` has been applied already, by `TrustedProxies`,
    and only if the connection came from one of MAILER_TRUSTED_PROXIES."""
    return request.client.host if request.client else None


IPDep = Annotated[str | None, Depends(client_ip)]

WRONG_TOKEN = "missing or wrong API token"


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """`Authorization: Bearer <token>` carrying `expected`, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode(), expected.encode())


_bearer = HTTPBearer(auto_error=False)


async def require_api_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer MAILER_API_TOKEN; a wrong or missing token learns nothing but 401."""
    expected: str = request.app.state.api_token
    given = credentials.credentials if credentials else ""
    if not bearer_matches(f"Bearer {given}", expected):
        raise HTTPException(
            status_code=401, detail=WRONG_TOKEN, headers={"WWW-Authenticate": "Bearer"}
        )


APIAuth = Depends(require_api_token)


def get_renderer(request: Request) -> EmailRenderer:
    """One renderer per app: it holds the parsed templates and a reusable Premailer."""
    state = request.app.state
    renderer: EmailRenderer | None = getattr(state, "email_renderer", None)
    if renderer is None:
        renderer = EmailRenderer(state.settings.email_templates)
        state.email_renderer = renderer
    return renderer
