"""The operator page's login cookie and CSRF token: who is logged in to /admin.

The cookie is signed with itsdangerous (the app's secret, salt "mailer.admin")
and expires after `SESSION_MAX_AGE`; it carries a random session id and a tag
of the API token, so rotating the token logs every session out, and it is
good only while its session id is live on the server
(`mailer.operators.admin_sessions`). The CSRF token is an HMAC of the cookie:
per session, with no server-side state. The pages that use these are
`views`; the web's `auth` middleware asks `current_session` too.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from mailer.config import Settings
from mailer.db import session_scope
from mailer.operators import admin_sessions

COOKIE = "mailer_admin"
SALT = "mailer.admin"
SESSION_MAX_AGE = 8 * 3600  # a working day; then the token is asked for again


@dataclass(frozen=True)
class AdminSession:
    cookie: str
    csrf: str
    sid: str


def serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret(), salt=SALT)


def _mac(settings: Settings, purpose: str, value: str) -> str:
    key = settings.secret().encode()
    return hmac.new(key, f"{SALT}.{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def token_tag(request: Request) -> str:
    """Which API token the session was opened with, without keeping the token itself."""
    return _mac(request.app.state.settings, "token", request.app.state.api_token)[:32]


def csrf_token(settings: Settings, cookie: str) -> str:
    return _mac(settings, "csrf", cookie)


def current_session(request: Request) -> AdminSession | None:
    """The logged-in session from the cookie, or None (missing, forged, expired, old token)."""
    settings: Settings = request.app.state.settings
    cookie = request.cookies.get(COOKIE, "")
    if not cookie:
        return None
    try:
        data = serializer(settings).loads(cookie, max_age=SESSION_MAX_AGE)
    except BadSignature:  # SignatureExpired is one too
        return None
    if not isinstance(data, dict) or not hmac.compare_digest(
        str(data.get("tag", "")), token_tag(request)
    ):
        return None
    sid = str(data.get("sid", ""))
    with session_scope(settings.database) as session:
        if not admin_sessions.is_live(session, sid):
            return None
    return AdminSession(cookie, csrf_token(settings, cookie), sid)


def checked(request: Request, csrf: str) -> AdminSession | None:
    """The session, if the POST is logged in and carries that session's CSRF token."""
    admin = current_session(request)
    if admin is None or not hmac.compare_digest(csrf.encode(), admin.csrf.encode()):
        return None
    return admin
