"""The reader's journey over real HTTP, against PostgreSQL, a Celery worker on Redis
and a real SMTP server that records what it receives."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from sqlalchemy import func, select

from mailer.models import Notification, Status, Subscription, SubscriptionEvent
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from tests.conftest import configure
from tests.helpers.journey import link, mails_to


@pytest.fixture
def newsletter(session):
    nl = newsletters.create_newsletter(
        session, "weekly-news", "Weekly News", "Weekly News <news@example.org>"
    )
    newsletters.ensure_topic(session, nl, "Science")
    newsletters.ensure_topic(session, nl, "Culture")
    session.commit()
    return nl


@pytest.fixture
def http(live_server):
    with httpx.Client(base_url=live_server, timeout=10, follow_redirects=False) as client:
        yield client


def subscription(session, email="reader@example.org"):
    session.expire_all()
    return session.scalars(
        select(Subscription)
        .join(Subscription.subscriber)
        .where(Subscription.subscriber.property.mapper.class_.email_key == email.lower())
    ).one()


def table_counts(session):
    session.expire_all()
    return tuple(
        session.scalar(select(func.count()).select_from(m))
        for m in (Subscription, SubscriptionEvent, Notification)
    )


def test_reader_subscribes_confirms_and_unsubscribes_in_one_click(
    http, newsletter, smtp_server, celery_worker, session
):
    form = http.get("/subscribe/weekly-news")
    assert form.status_code == 200 and 'name="topics" value="science"' in form.text

    answer = http.post(
        "/subscribe",
        data={
            "email": "Reader@Example.org",
            "newsletter": "weekly-news",
            "topics": ["Science"],
            "frequency": "daily",
        },
    )
    assert answer.status_code == 202 and "Check your inbox" in answer.text

    confirm_mail = mails_to(smtp_server, "Reader@example.org", 1)[0].message
    assert confirm_mail["Subject"] == "Confirm your subscription to Weekly News"
    assert {p.get_content_type() for p in confirm_mail.iter_parts()} == {"text/plain", "text/html"}
    confirm_url = link(confirm_mail, "confirm")
    assert confirm_url in confirm_mail.get_body(("html",)).get_content()

    # A mail scanner opening the link confirms nothing.
    page = http.get(confirm_url)
    assert page.status_code == 200 and "<button" in page.text and "Confirm" in page.text
    assert subscription(session).status is Status.PENDING

    # The button: a bare POST, no cookie, no CSRF field, no redirect.
    done = httpx.post(confirm_url)
    assert done.status_code == 200 and "subscribed" in done.text
    sub = subscription(session)
    assert sub.status is Status.ACTIVE and [t.slug for t in sub.topics] == ["science"]
    assert sub.frequency.value == "daily"

    welcome = mails_to(smtp_server, "Reader@example.org", 2)[1].message
    assert welcome["Subject"] == "Welcome to Weekly News"
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_url = re.search(r"<(http[^>]+)>", welcome["List-Unsubscribe"]).group(1)
    assert "mailto:" in welcome["List-Unsubscribe"]

    gone = httpx.post(
        unsubscribe_url,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert gone.status_code == 200 and "unsubscribed" in gone.text
    assert subscription(session).status is Status.UNSUBSCRIBED

    events = session.scalars(select(SubscriptionEvent).order_by(SubscriptionEvent.id)).all()
    assert [(e.old_status, e.new_status) for e in events] == [
        (None, "pending"),
        ("pending", "active"),
        ("active", "unsubscribed"),
    ]
    assert all(e.ip == "127.0.0.1" for e in events)


def test_json_subscribe_from_another_site_form(
    http, newsletter, smtp_server, celery_worker, session
):
    answer = http.post(
        "/subscribe",
        json={"email": "j@example.org", "newsletter": "weekly-news", "topics": ["culture"]},
    )
    assert answer.status_code == 202 and answer.json()["status"] == "accepted"
    mails_to(smtp_server, "j@example.org", 1)
    assert [t.slug for t in subscription(session, "j@example.org").topics] == ["culture"]


def test_subscribe_answers_alike_for_new_pending_and_active_addresses(
    http, newsletter, session, smtp_server, celery_worker
):
    payload = {"email": "same@example.org", "newsletter": "weekly-news"}
    new = http.post("/subscribe", json=payload)
    mails_to(smtp_server, "same@example.org", 1)
    pending = http.post("/subscribe", json=payload)
    sub = subscription(session, "same@example.org")
    subs.change_status(session, sub, Status.ACTIVE, source="test")
    session.commit()
    active = http.post("/subscribe", json=payload)
    assert new.status_code == pending.status_code == active.status_code == 202
    assert new.json() == pending.json() == active.json()
    assert set(new.headers) == set(active.headers)


def test_subscribe_does_the_same_database_work_for_known_and_unknown_addresses(
    newsletter, session, settings
):
    """No timing side channel: the web's statements can't depend on the reader's state,
    whether the newsletter's offer is still to be read (a fresh process) or kept."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from mailer.db import get_engine
    from mailer.web.app import create_app

    subs.subscribe(session, email="known@example.org", newsletter="weekly-news", confirmed=True)
    session.commit()
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    engine = get_engine(settings.database)
    event.listen(engine, "before_cursor_execute", record)
    try:
        runs = []
        for email in ("known@example.org", "unknown@example.org"):
            http = TestClient(create_app(settings))
            for _ in ("offer read", "offer kept"):
                statements.clear()
                answer = http.post("/subscribe", json={"email": email, "newsletter": "weekly-news"})
                runs.append((answer.status_code, answer.json(), list(statements)))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    known_cold, known_warm, unknown_cold, unknown_warm = runs
    assert known_cold[2], "a fresh process did no database work at all?"
    assert known_cold == unknown_cold
    assert known_warm == unknown_warm
    assert known_warm[2] == []  # a kept offer: nothing asked of the database


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not an address", "newsletter": "weekly-news"}, "email"),
        (
            {"email": "x@example.org\r\nBcc: victim@example.org", "newsletter": "weekly-news"},
            "email",
        ),
        ({"email": "x@example.org", "newsletter": "weekly-news", "topics": ["nope"]}, "topics"),
        (
            {"email": "x@example.org", "newsletter": "weekly-news", "frequency": "hourly"},
            "frequency",
        ),
        ({"newsletter": "weekly-news"}, "email"),
    ],
)
def test_bad_subscribe_input_is_refused_with_the_field_named_and_changes_nothing(
    http, newsletter, session, payload, field
):
    before = table_counts(session)
    answer = http.post("/subscribe", json=payload)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", field]
    assert table_counts(session) == before


def test_bad_address_on_the_form_gets_a_readable_page(http, newsletter, session):
    answer = http.post("/subscribe", data={"email": "nope", "newsletter": "weekly-news"})
    assert answer.status_code == 422 and "not valid" in answer.text
    assert table_counts(session) == (0, 0, 0)


def test_unknown_newsletter_is_404_everywhere(http, newsletter, session):
    assert http.get("/subscribe/no-such").status_code == 404
    answer = http.post("/subscribe", json={"email": "a@example.org", "newsletter": "no-such"})
    assert answer.status_code == 404 and "no-such" in answer.json()["detail"]
    assert table_counts(session) == (0, 0, 0)


@pytest.mark.parametrize("path", ["confirm", "unsubscribe", "preferences"])
def test_tampered_token_gets_a_clear_400_page_and_changes_nothing(http, newsletter, session, path):
    subs.subscribe(session, email="t@example.org", newsletter="weekly-news")
    session.commit()
    before = table_counts(session)
    for method in ("GET", "POST"):
        answer = http.request(method, f"/{path}/WyIxIiwxXQ.tampered.signature")
        assert answer.status_code == 400 and "link" in answer.text
    assert table_counts(session) == before
    assert subscription(session, "t@example.org").status is Status.PENDING


def test_double_confirm_sends_one_welcome(http, newsletter, smtp_server, celery_worker, session):
    http.post("/subscribe", json={"email": "d@example.org", "newsletter": "weekly-news"})
    url = link(mails_to(smtp_server, "d@example.org", 1)[0].message, "confirm")
    assert httpx.post(url).status_code == 200
    again = httpx.post(url)
    assert again.status_code == 200 and "Already confirmed" in again.text
    mails_to(smtp_server, "d@example.org", 2)
    notes = session.scalars(select(Notification.kind).order_by(Notification.id)).all()
    assert notes == ["confirm", "welcome"]


def test_unsubscribe_twice_is_harmless(http, newsletter, session, settings):
    from mailer.mail.links import Links

    out = subs.subscribe(session, email="u@example.org", newsletter="weekly-news", confirmed=True)
    session.commit()
    url = Links.from_settings(settings).unsubscribe(session.get(Subscription, out.subscription_id))
    page = http.get(url)
    assert page.status_code == 200 and "Unsubscribe" in page.text
    assert subscription(session, "u@example.org").status is Status.ACTIVE
    assert http.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    before = table_counts(session)
    assert http.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert table_counts(session) == before
    assert subscription(session, "u@example.org").status is Status.UNSUBSCRIBED


def test_preferences_page_changes_topics_and_frequency(http, newsletter, session, settings):
    from mailer.mail.links import Links

    out = subs.subscribe(session, email="p@example.org", newsletter="weekly-news", confirmed=True)
    session.commit()
    url = Links.from_settings(settings).preferences(session.get(Subscription, out.subscription_id))
    assert 'value="science"' in http.get(url).text
    saved = http.post(url, data={"topics": ["science", "culture"], "frequency": "daily"})
    assert saved.status_code == 200 and "saved" in saved.text
    sub = subscription(session, "p@example.org")
    assert sorted(t.slug for t in sub.topics) == ["culture", "science"]
    assert sub.frequency.value == "daily"
    refused = http.post(url, data={"topics": ["astrology"]})
    assert refused.status_code == 400 and "Unknown topic" in refused.text
    assert "notice error" in refused.text and "notice ok" in saved.text
    assert len(subscription(session, "p@example.org").topics) == 2


def test_resubscribe_after_unsubscribe_is_a_fresh_opt_in(
    http, newsletter, smtp_server, celery_worker, session
):
    out = subs.subscribe(session, email="r@example.org", newsletter="weekly-news", confirmed=True)
    sub = session.get(Subscription, out.subscription_id)
    subs.change_status(session, sub, Status.UNSUBSCRIBED, source="test")
    session.commit()
    assert (
        http.post(
            "/subscribe", json={"email": "r@example.org", "newsletter": "weekly-news"}
        ).status_code
        == 202
    )
    url = link(mails_to(smtp_server, "r@example.org", 1)[0].message, "confirm")
    assert subscription(session, "r@example.org").status is Status.PENDING
    assert httpx.post(url).status_code == 200
    assert subscription(session, "r@example.org").status is Status.ACTIVE


def test_unsubscribe_pressed_in_the_confirmation_stands_and_no_new_one_goes_out_at_once(
    http, newsletter, smtp_server, celery_worker, session, monkeypatch
):
    """ "Unsubscribe" in the confirmation mail is the answer of someone who never asked:
    the address submitted again at once changes nothing and mails nobody. The resend
    interval holds on this path too; once it has passed, the owner can ask again."""
    # Read by the worker's next task; long enough for the steps below under load.
    configure(monkeypatch, confirm_resend_interval="10")
    ask = {"email": "x@example.org", "newsletter": "weekly-news"}
    assert http.post("/subscribe", json=ask).status_code == 202
    (confirm,) = mails_to(smtp_server, "x@example.org", 1)
    asked_at = time.monotonic()
    one_click = re.search(r"<(http[^>]+)>", confirm.message["List-Unsubscribe"]).group(1)
    assert httpx.post(one_click, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    before = subscription(session, "x@example.org")
    assert before.status is Status.UNSUBSCRIBED
    generation = before.generation

    assert http.post("/subscribe", json=ask).status_code == 202
    # A second address behind it: once its mail is out, the worker has taken both.
    assert http.post("/subscribe", json={**ask, "email": "y@example.org"}).status_code == 202
    mails_to(smtp_server, "y@example.org", 1)
    assert len(smtp_server.to("x@example.org")) == 1
    after = subscription(session, "x@example.org")
    assert (after.status, after.generation) == (Status.UNSUBSCRIBED, generation)

    time.sleep(max(0.0, 10.5 - (time.monotonic() - asked_at)))
    assert http.post("/subscribe", json=ask).status_code == 202
    mails_to(smtp_server, "x@example.org", 2)
    assert subscription(session, "x@example.org").status is Status.PENDING
