"""The operator API against PostgreSQL: auth, validation, not-found and conflicts, paging."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailer.models import Newsletter, Status, Subscription, SubscriptionEvent
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from tests.conftest import API_TOKEN as TOKEN


@pytest.fixture
def newsletter(session):
    nl = newsletters.create_newsletter(session, "weekly", "Weekly", "Weekly <news@example.org>")
    newsletters.ensure_topic(session, nl, "Science")
    session.commit()
    return nl


def reader(session, email, status=Status.ACTIVE, newsletter="weekly"):
    out = subs.subscribe(session, email=email, newsletter=newsletter, confirmed=True, source="test")
    sub = session.get(Subscription, out.subscription_id)
    if status is not Status.ACTIVE:
        subs.change_status(session, sub, status, source="test")
    session.commit()
    return sub


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/newsletters"),
        ("post", "/api/newsletters"),
        ("get", "/api/subscribers"),
        ("delete", "/api/subscribers/1"),
        ("put", "/api/newsletters/weekly/schedules/weekly"),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-Token": "x"}])
def test_missing_or_wrong_token_gets_401_and_nothing_else(api, method, path, headers):
    answer = api.request(method, path, headers=headers, content=b"{not json")
    assert answer.status_code == 401
    assert answer.json() == {"detail": "missing or wrong API token"}
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_right_token_reaches_several_endpoints(api, newsletter):
    assert api.get("/api/newsletters", headers=TOKEN).json()[0]["slug"] == "weekly"
    assert api.get("/api/subscribers", headers=TOKEN).json() == {"items": [], "next_cursor": None}
    assert api.get("/api/newsletters/weekly/topics", headers=TOKEN).json()[0]["slug"] == "science"
    assert api.get("/api/stats", headers=TOKEN).status_code == 200


def test_newsletter_create_update_pause_resume(api, session):
    made = api.post(
        "/api/newsletters",
        headers=TOKEN,
        json={"slug": "daily", "name": "Daily", "sender": "Daily <d@example.org>"},
    )
    assert made.status_code == 201 and made.json()["default_frequency"] == "weekly"
    changed = api.patch(
        "/api/newsletters/daily",
        headers=TOKEN,
        json={"name": "The Daily", "default_frequency": "daily"},
    )
    assert changed.json()["name"] == "The Daily" and changed.json()["default_frequency"] == "daily"
    assert api.post("/api/newsletters/daily/pause", headers=TOKEN).json()["paused"] is True
    session.expire_all()
    assert session.scalar(select(Newsletter.paused).where(Newsletter.slug == "daily")) is True
    assert api.post("/api/newsletters/daily/resume", headers=TOKEN).json()["paused"] is False


def test_duplicate_newsletter_is_409_and_changes_nothing(api, newsletter, session):
    again = api.post(
        "/api/newsletters",
        headers=TOKEN,
        json={"slug": "weekly", "name": "Other", "sender": "O <o@example.org>"},
    )
    assert again.status_code == 409 and "weekly" in again.json()["detail"]
    session.expire_all()
    assert session.scalar(select(Newsletter.name).where(Newsletter.slug == "weekly")) == "Weekly"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"slug": "Bad Slug", "name": "N", "sender": "N <n@example.org>"}, "slug"),
        ({"slug": "ok", "name": "N", "sender": "no address here"}, "sender"),
        ({"slug": "ok", "sender": "N <n@example.org>"}, "name"),
        (
            {
                "slug": "ok",
                "name": "N",
                "sender": "N <n@example.org>",
                "default_frequency": "hourly",
            },
            "default_frequency",
        ),
    ],
)
def test_bad_newsletter_is_422_naming_the_field_and_creates_nothing(api, session, body, field):
    answer = api.post("/api/newsletters", headers=TOKEN, json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"][-1] == field
    assert session.scalar(select(func.count()).select_from(Newsletter)) == 0


def test_unknown_newsletter_is_404_saying_which(api):
    answer = api.get("/api/newsletters/nope", headers=TOKEN)
    assert answer.status_code == 404 and "'nope'" in answer.json()["detail"]
    assert api.get("/api/newsletters/nope/topics", headers=TOKEN).status_code == 404
    assert api.get("/api/subscribers/nobody@example.org", headers=TOKEN).status_code == 404


def test_topics_create_conflict_and_rename_keeps_slug(api, newsletter):
    made = api.post("/api/newsletters/weekly/topics", headers=TOKEN, json={"name": "World News"})
    assert made.status_code == 201 and made.json()["slug"] == "world-news"
    dup = api.post("/api/newsletters/weekly/topics", headers=TOKEN, json={"name": "science"})
    assert dup.status_code == 409
    renamed = api.patch(
        "/api/newsletters/weekly/topics/world-news", headers=TOKEN, json={"name": "World"}
    )
    assert renamed.json() == {"id": made.json()["id"], "slug": "world-news", "name": "World"}
    clash = api.patch(
        "/api/newsletters/weekly/topics/world-news", headers=TOKEN, json={"name": "Science"}
    )
    assert clash.status_code == 409
    missing = api.patch("/api/newsletters/weekly/topics/none", headers=TOKEN, json={"name": "X"})
    assert missing.status_code == 404


def test_subscribers_page_through_with_a_cursor_and_filters(api, newsletter, session):
    for i in range(5):
        reader(session, f"page{i}@example.org")
    reader(session, "gone@example.org", Status.UNSUBSCRIBED)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "newsletter": "weekly", "status": "active"}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/api/subscribers", headers=TOKEN, params=params).json()
        seen += [item["email"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"page{i}@example.org" for i in range(5)]
    found = api.get("/api/subscribers", headers=TOKEN, params={"email": "GONE@"}).json()
    assert [i["email"] for i in found["items"]] == ["gone@example.org"]
    assert found["items"][0]["subscriptions"][0]["status"] == "unsubscribed"


def test_bad_cursor_and_limit_are_422_naming_the_field(api, newsletter):
    bad = api.get("/api/subscribers", headers=TOKEN, params={"cursor": "garbage"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "cursor"
    big = api.get("/api/subscribers", headers=TOKEN, params={"limit": 5000})
    assert big.status_code == 422 and big.json()["detail"][0]["loc"][-1] == "limit"


def test_get_subscriber_by_address_or_id(api, newsletter, session):
    sub = reader(session, "Ann@Example.org")
    by_address = api.get("/api/subscribers/ann@example.org", headers=TOKEN).json()
    by_id = api.get(f"/api/subscribers/{sub.subscriber_id}", headers=TOKEN).json()
    assert by_address == by_id and by_id["email"] == "Ann@example.org"
    assert by_id["subscriptions"][0]["consent_source"] == "test"


def test_operator_status_change_is_audited_and_bad_transitions_are_409(api, newsletter, session):
    sub = reader(session, "ann@example.org")
    answer = api.post(
        "/api/subscribers/ann@example.org/status",
        headers=TOKEN,
        json={"newsletter": "weekly", "status": "unsubscribed", "detail": "asked by phone"},
    )
    assert answer.status_code == 200 and answer.json()["status"] == "unsubscribed"
    event = session.scalars(
        select(SubscriptionEvent)
        .where(SubscriptionEvent.subscription_id == sub.id)
        .order_by(SubscriptionEvent.id.desc())
    ).first()
    assert (event.new_status, event.source, event.detail) == (
        "unsubscribed",
        "operator",
        "asked by phone",
    )
    back_to_bounced = api.post(
        "/api/subscribers/ann@example.org/status",
        headers=TOKEN,
        json={"newsletter": "weekly", "status": "bounced"},
    )
    assert back_to_bounced.status_code == 409
    wrong = api.post(
        "/api/subscribers/ann@example.org/status",
        headers=TOKEN,
        json={"newsletter": "weekly", "status": "sleeping"},
    )
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"][-1] == "status"


def test_export_holds_the_readers_subscriptions_consent_and_events(api, newsletter, session):
    reader(session, "ann@example.org", Status.UNSUBSCRIBED)
    data = api.get("/api/subscribers/ann@example.org/export", headers=TOKEN).json()
    assert data["subscriber"]["email"] == "ann@example.org"
    assert [e["new_status"] for e in data["events"]] == ["active", "unsubscribed"]
    assert data["consent"][0]["consent_source"] == "test"
    assert data["deliveries"] == [] and data["suppressed"] is False


def test_schedule_put_get_and_validation(api, newsletter, session):
    put = api.put(
        "/api/newsletters/weekly/schedules/weekly",
        headers=TOKEN,
        json={"cron": "0 8 * * MON", "timezone": "Europe/Kyiv"},
    )
    assert put.status_code == 200
    body = api.get("/api/newsletters/weekly/schedules/weekly", headers=TOKEN).json()
    assert (body["cron"], body["timezone"]) == ("0 8 * * MON", "Europe/Kyiv")
    assert "T08:00:00+0" in body["next_run_local"]
    bad_tz = api.put(
        "/api/newsletters/weekly/schedules/weekly",
        headers=TOKEN,
        json={"cron": "0 9 * * *", "timezone": "Mars/Olympus"},
    )
    assert bad_tz.status_code == 422 and bad_tz.json()["detail"][0]["loc"][-1] == "timezone"
    bad_cron = api.put(
        "/api/newsletters/weekly/schedules/daily",
        headers=TOKEN,
        json={"cron": "61 8 * * *", "timezone": "UTC"},
    )
    assert bad_cron.status_code == 422 and bad_cron.json()["detail"][0]["loc"][-1] == "cron"
    assert api.get("/api/newsletters/weekly/schedules/daily", headers=TOKEN).status_code == 404
    kept = api.get("/api/newsletters/weekly/schedules", headers=TOKEN).json()
    assert [(s["frequency"], s["cron"]) for s in kept] == [("weekly", "0 8 * * MON")]


def test_openapi_documents_the_operator_routes_with_bearer_auth(api):
    spec = api.get("/openapi.json").json()
    assert "/api/subscribers/{ref}/export" in spec["paths"]
    assert "SubscriberExport" in spec["components"]["schemas"]
    assert spec["paths"]["/api/newsletters"]["post"]["security"] == [{"HTTPBearer": []}]
