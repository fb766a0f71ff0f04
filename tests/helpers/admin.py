"""Helpers for tests of the /admin page: logging a test client in, and holding a cookie."""

from __future__ import annotations

from mailer.web.admin import cookie as admin_cookie

TOKEN = "test-api-token"


def logged_in(client) -> str:
    """Log the client in; it keeps the cookie, whose value is returned."""
    answer = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
    assert answer.status_code == 303
    return answer.cookies[admin_cookie.COOKIE]


def holding(client, value: str):
    """The client with only this session cookie (or none)."""
    client.cookies.clear()
    if value:
        client.cookies.set(admin_cookie.COOKIE, value)
    return client
