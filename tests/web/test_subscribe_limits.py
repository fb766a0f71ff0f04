"""Floods get 429; configured sites may post cross-origin; nothing leaks stack traces."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mailer.readers import newsletters
from mailer.web.app import create_app


@pytest.fixture
def newsletter(session):
    newsletters.create_newsletter(session, "n", "N", "N <n@example.org>")
    session.commit()


def client(settings, **changes):
    return TestClient(create_app(settings.model_copy(update=changes)))


def test_flood_from_one_ip_is_refused_with_429(settings, newsletter):
    http = client(settings, subscribe_rate_ip_per_minute=3)
    codes = [
        http.post("/subscribe", json={"email": f"a{i}@example.org", "newsletter": "n"}).status_code
        for i in range(5)
    ]
    assert codes == [202, 202, 202, 429, 429]
    refused = http.post("/subscribe", json={"email": "z@example.org", "newsletter": "n"})
    assert int(refused.headers["Retry-After"]) > 0


def test_flood_for_one_address_is_refused_with_429(settings, newsletter):
    http = client(settings, subscribe_rate_address_per_hour=2)
    codes = [
        http.post("/subscribe", json={"email": "Same@example.org", "newsletter": "n"}).status_code
        for _ in range(2)
    ]
    codes.append(
        http.post("/subscribe", json={"email": "same@EXAMPLE.org", "newsletter": "n"}).status_code
    )
    assert codes == [202, 202, 429]


def test_configured_site_may_post_cross_origin(settings, newsletter):
    http = client(settings, cors_origins=["https://site.example"])
    preflight = http.options(
        "/subscribe",
        headers={
            "Origin": "https://site.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.headers["access-control-allow-origin"] == "https://site.example"
    other = http.options(
        "/subscribe",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_honeypot_filled_by_a_bot_is_answered_alike_but_stores_nothing(
    settings, newsletter, session
):
    from sqlalchemy import func, select

    from mailer.models import Subscriber

    http = client(settings)
    answer = http.post(
        "/subscribe",
        data={"email": "bot@example.org", "newsletter": "n", "website": "http://spam.example"},
    )
    assert answer.status_code == 202
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_pages_carry_security_headers(settings, newsletter):
    page = client(settings).get("/subscribe/n")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_oversized_body_is_refused_with_413_and_changes_nothing(settings, newsletter, session):
    from sqlalchemy import func, select

    from mailer.models import Subscriber

    http = client(settings, max_body_bytes=10_000)
    declared = http.post(
        "/subscribe", content=b"x" * 20_000, headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413

    def chunks():
        for _ in range(30):
            yield b"a" * 1000

    streamed = http.post(
        "/subscribe", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_non_utf8_json_body_is_a_clear_400(settings, newsletter):
    answer = client(settings).post(
        "/subscribe", content=b'{"email": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400 and "JSON" in answer.json()["detail"]
