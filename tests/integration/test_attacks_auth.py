"""Authentication comes first and logging out ends a session, over real HTTP.

- An admin cookie replayed after logout is refused: the session is ended on
  the server, not only deleted from the browser.
- The operator API answers 401 to a caller without the token before it reads
  the request body (it used to parse and validate the body first, so a 422
  told an anonymous caller what the route wanted); the same for admin POSTs
  without a live session. Proved with a request that declares a body and
  never sends it: the answer comes at once.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from mailer.web.admin import cookie as admin_cookie
from tests.helpers.admin import holding, logged_in
from tests.helpers.editions import make_newsletter


@pytest.fixture
def http(live_server):
    with httpx.Client(base_url=live_server, timeout=10) as client:
        yield client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def test_an_admin_cookie_replayed_after_logout_is_refused(http, session):
    make_newsletter(session)
    session.commit()
    cookie = logged_in(http)
    dashboard = http.get("/admin")
    assert dashboard.status_code == 200
    csrf = csrf_of(dashboard.text)

    out = http.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303

    replayed = holding(http, cookie)
    assert replayed.get("/admin", follow_redirects=False).headers["location"] == "/admin/login"
    refused = replayed.post("/admin/newsletters/news/pause", data={"csrf": csrf})
    assert refused.status_code == 403
    assert replayed.get("/admin/newsletters/news/preview/html").status_code == 403
    # a new login is a new session, and works
    logged_in(holding(http, ""))
    assert http.get("/admin").status_code == 200


def test_every_api_operation_refuses_a_missing_token_before_reading_the_body(http):
    spec = http.get("/openapi.json").json()
    asked = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method in operations:
            url = re.sub(r"\{[^}]+\}", "1", path)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
                answer = http.request(
                    method.upper(),
                    url,
                    content=b"{not json",
                    headers=headers | {"Content-Type": "application/json"},
                )
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["WWW-Authenticate"] == "Bearer"
                assert answer.json() == {"detail": "missing or wrong API token"}
                assert answer.headers["X-Frame-Options"] == "DENY"
                asked += 1
    assert asked > 30


def answer_to_a_body_never_sent(base: str, request_line: str, *headers: str) -> str:
    """Send the head of a request that promises 100,000 bytes and send none of them."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        head = [request_line, f"Host: {parts.netloc}", "Content-Length: 100000", *headers]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]
        except TimeoutError:
            return "no answer: the server waited for the body"


def test_the_api_token_and_the_admin_session_are_checked_before_the_body_is_read(live_server):
    assert answer_to_a_body_never_sent(
        live_server, "POST /api/articles HTTP/1.1", "Content-Type: application/json"
    ).startswith("HTTP/1.1 401")
    assert answer_to_a_body_never_sent(
        live_server,
        "POST /admin/newsletters/news/pause HTTP/1.1",
        "Content-Type: application/x-www-form-urlencoded",
        f"Cookie: {admin_cookie.COOKIE}=forged",
    ).startswith("HTTP/1.1 403")
