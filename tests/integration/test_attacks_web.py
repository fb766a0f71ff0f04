"""Every answer carries the security headers; reader pages show no address, set no cookie.

The admin page's cookie, CSRF fields and its one framable preview route are
tested in test_admin_browser.py; here every other kind of answer is walked,
errors included (404, 400, 401, 413, 422), because an attacker aims at those.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.mail.links import Links
from mailer.models import Subscription
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from mailer.web.app import create_app

AUTH = {"Authorization": "Bearer test-api-token"}
EMAIL = "private.person@example.org"


@pytest.fixture
def links(session: Session, settings: Settings) -> dict[str, str]:
    nl = newsletters.create_newsletter(session, "news", "News", "News <news@example.org>")
    newsletters.ensure_topic(session, nl, "Science")
    pending = subs.subscribe(session, email="waiting@example.org", newsletter="news")
    active = subs.subscribe(session, email=EMAIL, newsletter="news", confirmed=True)
    session.commit()
    made = Links.from_settings(settings)
    sub = session.get_one(Subscription, active.subscription_id)
    waiting = session.get_one(Subscription, pending.subscription_id)
    path = lambda url: url.split("://", 1)[1].split("/", 1)[1]  # noqa: E731
    return {
        "confirm": "/" + path(made.confirm(waiting)),
        "unsubscribe": "/" + path(made.unsubscribe(sub)),
        "preferences": "/" + path(made.preferences(sub)),
    }


@pytest.fixture
def http(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def requests_to_make(links: dict[str, str]) -> list[tuple[str, str, dict[str, object], int]]:
    """(method, path, httpx kwargs, expected status): pages, API, and the errors."""
    return [
        ("GET", "/subscribe/news", {}, 200),
        ("GET", "/subscribe/nope", {}, 404),
        ("POST", "/subscribe", {"data": {"email": "x", "newsletter": "news"}}, 422),
        ("GET", links["confirm"], {}, 200),
        ("GET", links["unsubscribe"], {}, 200),
        ("GET", links["preferences"], {}, 200),
        ("POST", links["preferences"], {"data": {"frequency": "daily"}}, 200),
        ("GET", "/confirm/forged.token.here", {}, 400),
        ("GET", "/digest/1", {}, 404),
        ("GET", "/api/newsletters", {}, 401),
        ("GET", "/api/newsletters", {"headers": AUTH}, 200),
        ("GET", "/api/subscribers/999999999999", {"headers": AUTH}, 404),
        ("POST", "/api/articles", {"headers": AUTH, "json": []}, 422),
        (
            "POST",
            "/api/articles",
            {"headers": AUTH | {"Content-Length": str(10**9)}, "content": b"{}"},
            413,
        ),
        ("GET", "/openapi.json", {}, 200),
        ("GET", "/admin/login", {}, 200),
        ("GET", "/no/such/page", {}, 404),
    ]


def test_every_page_api_answer_and_error_carries_the_security_headers(
    http: TestClient, links: dict[str, str]
) -> None:
    for method, path, kwargs, status in requests_to_make(links):
        answer = http.request(method, path, **kwargs)  # type: ignore[arg-type]
        where = f"{method} {path} -> {answer.status_code}"
        assert answer.status_code == status, where
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", where
        csp = answer.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, where
        assert answer.headers.get("X-Frame-Options") == "DENY", where
        assert answer.headers.get("Referrer-Policy") == "no-referrer", where


def test_reader_pages_never_show_the_address_nor_set_a_cookie(
    http: TestClient, links: dict[str, str]
) -> None:
    """A forwarded mail's links open these pages for whoever clicks: they must not
    say whose subscription it is, and the reader side keeps no session at all."""
    local = EMAIL.split("@")[0]
    answers = [
        http.get(links["preferences"]),
        http.post(links["preferences"], data={"frequency": "weekly"}),
        http.get(links["unsubscribe"]),
        http.post(links["unsubscribe"], data={"List-Unsubscribe": "One-Click"}),
        http.get(links["preferences"]),  # after leaving
        http.get("/subscribe/news"),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert local not in answer.text and EMAIL not in answer.text
        assert "set-cookie" not in answer.headers
