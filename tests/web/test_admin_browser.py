"""/admin in a real browser (Debian's chromium via playwright) against the live app over HTTP,
plus the cookie and CSRF rules checked from outside the browser, where a forger would be."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailer.editions import prepare, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import DeliveryStatus, Digest, Frequency, Newsletter
from mailer.web.admin import cookie as admin_cookie
from mailer.web.app import create_app
from tests.browser import chromium
from tests.conftest import configure
from tests.helpers.admin import TOKEN, holding, logged_in
from tests.helpers.editions import add_article, add_reader, make_newsletter


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def news(session):
    nl = make_newsletter(session)
    add_reader(session, nl, "ann@example.org")
    add_article(session, nl, "Python 4 released", topics=["Python"])
    session.commit()
    return nl


@pytest.fixture
def page(browser, live_server):
    """A fresh browser profile; afterwards, no page may have tripped the CSP (no inline script)."""
    context = browser.new_context(base_url=live_server)
    page = context.new_page()
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield page
    context.close()
    assert refused == [], "the CSP refused something on an admin page"


def log_in(page, token: str = TOKEN):
    page.goto("/admin")
    page.fill("#token", token)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("button[type=submit]")
    page.wait_for_load_state()
    return answer.value


def paused(session) -> bool:
    session.expire_all()
    return bool(session.scalar(select(Newsletter.paused).where(Newsletter.slug == "news")))


def editions(session) -> list[tuple[int, str]]:
    session.expire_all()
    return [tuple(r) for r in session.execute(select(Digest.id, Digest.status)).all()]


# -- in the browser -------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_leaves_no_cookie(page, news):
    page.goto("/admin")
    assert page.url.endswith("/admin/login")
    answer = log_in(page, "not-the-token")
    assert answer.status == 401
    assert "That is not the API token" in page.inner_text("[role=alert]")
    assert page.context.cookies() == []
    page.goto("/admin")
    assert page.url.endswith("/admin/login")


def test_the_right_token_opens_a_session_with_an_httponly_strict_cookie(page, news):
    log_in(page)
    assert page.url.endswith("/admin")
    assert "The News" in page.inner_text("h2")
    [cookie] = page.context.cookies()
    assert cookie["name"] == admin_cookie.COOKIE and cookie["path"] == "/admin"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # the live server is plain http
    assert page.evaluate("document.cookie") == ""  # scripts can't read it

    page.click("text=Log out")
    page.wait_for_load_state()
    assert page.url.endswith("/admin/login") and page.context.cookies() == []


def test_the_preview_frame_shows_the_next_digest_framed_by_admin_only(page, news, session):
    log_in(page)
    with page.expect_response(re.compile(r"/preview/html")) as framed:
        page.click("text=Preview")
    frame = page.frame_locator("iframe")
    frame.get_by_role("link", name="Python 4 released").wait_for()
    assert "frame-ancestors 'self'" in framed.value.headers["content-security-policy"]
    dashboard = page.request.get("/admin")
    assert "frame-ancestors 'none'" in dashboard.headers["content-security-policy"]
    assert "Nothing is recorded" in page.inner_text("main")
    assert editions(session) == []


def test_pause_resume_send_now_and_cancel_work_from_the_buttons(page, news, session):
    log_in(page)
    page.click("button:has-text('Pause')")
    page.wait_for_load_state()
    assert paused(session) and "news is paused" in page.inner_text("[role=status]")
    page.click("button:has-text('Resume')")
    page.wait_for_load_state()
    assert not paused(session)

    page.click("button:has-text('Send now')")
    page.wait_for_load_state()
    [(digest_id, status)] = editions(session)
    assert status == "created"  # no worker in this test: it waits for one
    assert f"Edition {digest_id} is made" in page.inner_text("[role=status]")

    page.click(f"#edition-{digest_id} button:has-text('Cancel')")
    page.wait_for_load_state()
    assert editions(session) == [(digest_id, "cancelled")]
    assert f"Edition {digest_id} is cancelled" in page.inner_text("[role=status]")


def test_a_post_without_the_csrf_token_or_with_a_wrong_one_is_403_and_changes_nothing(
    page, news, session, live_server
):
    log_in(page)
    for form in ({}, {"csrf": "0" * 64}):
        for path in ("/admin/newsletters/news/pause", "/admin/newsletters/news/send"):
            answer = page.request.post(path, form=form, max_redirects=0)
            assert answer.status == 403, (path, form)
    [cookie] = page.context.cookies()
    outside = httpx.post(
        f"{live_server}/admin/newsletters/news/pause",
        cookies={cookie["name"]: cookie["value"]},
        data={"frequency": "daily"},
    )
    assert outside.status_code == 403 and "Nothing was changed" in outside.text
    assert not paused(session) and editions(session) == []
    # The session's own token, read from the page, is what makes the same POST work.
    csrf = page.get_attribute("input[name=csrf]", "value")
    ok = page.request.post("/admin/newsletters/news/pause", form={"csrf": csrf}, max_redirects=0)
    assert ok.status == 303 and paused(session)


# -- outside the browser: what the cookie carries and where it is good ----------------------


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), base_url=settings.base_url) as c:
        yield c


def test_login_attempts_past_the_hourly_allowance_are_refused_even_with_the_right_token(
    monkeypatch, settings
):
    limited = configure(
        monkeypatch,
        admin_login_attempts_per_hour="3",
        trusted_proxies="testclient",
        database_url=settings.database_url,
    )
    with TestClient(create_app(limited), base_url=limited.base_url) as client:
        for guess in ("a", "b", "c"):
            wrong = client.post("/admin/login", data={"token": guess}, follow_redirects=False)
            assert wrong.status_code == 401 and "not the API token" in wrong.text
        refused = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
        assert refused.status_code == 429 and "Too many login attempts" in refused.text
        assert 0 < int(refused.headers["Retry-After"]) <= 3600
        assert admin_cookie.COOKIE not in refused.cookies and not client.cookies
        # The allowance is per client address: the operator elsewhere still gets in.
        elsewhere = client.post(
            "/admin/login",
            data={"token": TOKEN},
            headers={"X-Forwarded-For": "203.0.113.9"},
            follow_redirects=False,
        )
        assert elsewhere.status_code == 303 and admin_cookie.COOKIE in elsewhere.cookies


def test_the_cookie_is_secure_when_the_public_address_is_https(monkeypatch, settings):
    secure = configure(monkeypatch, base_url="https://news.example.org")
    with TestClient(create_app(secure), base_url="https://news.example.org") as client:
        answer = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
    flags = answer.headers["set-cookie"].lower()
    assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags
    assert "path=/admin" in flags and f"max-age={admin_cookie.SESSION_MAX_AGE}" in flags


@pytest.mark.parametrize(
    "tamper",
    [
        lambda value: value[:-2] + ("AA" if not value.endswith("AA") else "BB"),  # forged
        lambda value: "",  # none
    ],
)
def test_a_forged_or_missing_cookie_is_sent_to_the_login(client, news, tamper):
    holding(client, tamper(logged_in(client)))
    answer = client.get("/admin", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/login"
    assert client.get("/admin/newsletters/news/preview/html").status_code == 403


def test_an_expired_session_or_one_from_an_old_api_token_is_over(
    client, news, settings, monkeypatch
):
    value = logged_in(client)
    assert client.get("/admin").status_code == 200
    monkeypatch.setattr(admin_cookie, "SESSION_MAX_AGE", -1)
    assert client.get("/admin", follow_redirects=False).status_code == 303
    monkeypatch.undo()

    rotated = configure(monkeypatch, api_token="a-new-token", database_url=settings.database_url)
    with TestClient(create_app(rotated)) as other:
        answer = holding(other, value).get("/admin", follow_redirects=False)
    assert answer.status_code == 303


def test_the_outbox_link_shows_only_with_the_built_in_sink(client, news, monkeypatch, settings):
    value = logged_in(client)
    assert 'href="/outbox"' not in client.get("/admin").text
    monkeypatch.delenv("MAILER_SMTP_URL")
    sink = configure(monkeypatch, database_url=settings.database_url)
    assert sink.uses_sink
    with TestClient(create_app(sink)) as with_sink:
        page = holding(with_sink, value).get("/admin")
    assert page.status_code == 200 and 'href="/outbox"' in page.text


def test_refusals_from_the_domain_are_shown_and_change_nothing(client, news, session):
    value = logged_in(client)
    csrf = admin_cookie.csrf_token(client.app.state.settings, value)
    gone = client.post("/admin/editions/999/cancel", data={"csrf": csrf})
    assert gone.status_code == 404 and "There is no edition 999." in gone.text
    bad = client.post("/admin/newsletters/news/send", data={"csrf": csrf, "frequency": "hourly"})
    assert bad.status_code == 422 and "frequency must be one of" in bad.text
    assert editions(session) == []


def test_an_editions_page_lists_its_deliveries_and_filters_them_by_status(
    client, news, session, settings
):
    add_reader(session, news, "bob@example.org")
    edition = schedule.create_now(session, news, Frequency.DAILY)
    prepare.prepare(session, settings, EmailRenderer(settings.email_templates), edition.id)
    session.commit()
    logged_in(client)

    every = client.get(f"/admin/editions/{edition.id}")
    assert every.status_code == 200
    assert "ann@example.org" in every.text and "bob@example.org" in every.text
    assert "Cancel this edition" in every.text and "queued 2" in every.text
    none_sent = client.get(f"/admin/editions/{edition.id}?status={DeliveryStatus.SENT.value}")
    assert "ann@example.org" not in none_sent.text and "No deliveries with status sent" in (
        none_sent.text
    )
    assert client.get("/admin/editions/999").status_code == 404
