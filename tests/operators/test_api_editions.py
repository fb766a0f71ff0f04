"""Editions through the operator API: PostgreSQL, Redis, and for the end-to-end cancel a real
Celery worker and SMTP server."""

from __future__ import annotations

import threading
import time

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mailer.cli import main
from mailer.editions import prepare, reservations, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestVariant,
    Frequency,
    Subscriber,
    Subscription,
    utcnow,
)
from mailer.sending import claims, loop, marks
from mailer.web.app import create_app
from tests.conftest import API_TOKEN as TOKEN
from tests.conftest import configure, wait_for
from tests.helpers.editions import add_article, add_reader, make_newsletter


@pytest.fixture
def news(session):
    """Three readers: two all-topics, one Python only; two fresh articles."""
    nl = make_newsletter(session)
    add_reader(session, nl, "ann@example.org")
    add_reader(session, nl, "bob@example.org")
    add_reader(session, nl, "cy@example.org", topics=["Python"])
    add_article(session, nl, "Python 4 released", topics=["Python"])
    add_article(session, nl, "Weather report", hours_ago=3)
    session.commit()
    return nl


def prepared(session, settings, nl, n_readers: int = 0) -> int:
    """An edition made and prepared in-process, as the worker's prepare task would."""
    for i in range(n_readers):
        add_reader(session, nl, f"extra{i:02d}@example.org")
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    prepare.prepare(session, settings, EmailRenderer(settings.email_templates), edition.id)
    session.commit()
    return edition.id


def set_status(session, digest_id: int, email_part: str, status: DeliveryStatus) -> None:
    """Move the deliveries of readers whose address contains `email_part` to `status`."""
    ids = session.scalars(
        select(Delivery.id)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.digest_id == digest_id, Subscriber.email.contains(email_part))
    ).all()
    session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(status=status))
    session.commit()


def by_address(api, digest_id: int) -> dict[str, str]:
    page = api.get(f"/api/editions/{digest_id}/deliveries", headers=TOKEN).json()
    return {d["address"]: d["status"] for d in page["items"]}


def reserved(session, digest_id: int) -> int:
    return len(reservations.reserved_articles(session, digest_id))


# -- auth and not found ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/newsletters/news/preview"),
        ("post", "/api/newsletters/news/editions"),
        ("get", "/api/newsletters/news/editions"),
        ("get", "/api/editions/1"),
        ("post", "/api/editions/1/cancel"),
        ("get", "/api/editions/1/deliveries"),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_every_edition_endpoint_wants_the_token(api, news, session, method, path, headers):
    answer = api.request(method, path, headers=headers, content=b"{not json")
    assert answer.status_code == 401
    assert answer.json() == {"detail": "missing or wrong API token"}
    assert session.scalar(select(func.count()).select_from(Digest)) == 0


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("get", "/api/newsletters/nope/preview", "There is no newsletter 'nope'."),
        ("post", "/api/newsletters/nope/editions", "There is no newsletter 'nope'."),
        ("get", "/api/newsletters/nope/editions", "There is no newsletter 'nope'."),
        ("get", "/api/editions/999", "There is no edition 999."),
        ("post", "/api/editions/999/cancel", "There is no edition 999."),
        ("get", "/api/editions/999/deliveries", "There is no edition 999."),
        ("get", "/api/editions/99999999999", "There is no edition 99999999999."),
        ("post", "/api/editions/99999999999/cancel", "There is no edition 99999999999."),
        (
            "get",
            "/api/newsletters/news/preview?subscriber=stranger@example.org",
            "No subscriber 'stranger@example.org'.",
        ),
    ],
)
def test_unknown_newsletters_editions_and_readers_are_404_with_their_name(
    api, news, method, path, message
):
    answer = api.request(method, path, headers=TOKEN)
    assert answer.status_code == 404
    assert answer.json() == {"detail": message}


# -- preview --------------------------------------------------------------------------------


def test_preview_shows_the_next_edition_and_records_nothing(api, news, session):
    everyone = api.get("/api/newsletters/news/preview", headers=TOKEN)
    assert everyone.status_code == 200
    assert everyone.headers["content-type"].startswith("text/html")
    assert "Python 4 released" in everyone.text and "Weather report" in everyone.text
    assert "/unsubscribe/" not in everyone.text
    assert "frame-ancestors 'none'" in everyone.headers["content-security-policy"]

    cy = api.get("/api/newsletters/news/preview?subscriber=cy@example.org", headers=TOKEN)
    assert "Python 4 released" in cy.text and "Weather report" not in cy.text
    assert "cy@example.org" in cy.text and "/unsubscribe/" in cy.text

    for table in (Digest, Delivery, DigestVariant):
        assert session.scalar(select(func.count()).select_from(table)) == 0


def test_preview_with_nothing_new_says_so_with_409(api, news, session, settings):
    prepared(session, settings, news)  # every article is now reserved for every reader
    answer = api.get("/api/newsletters/news/preview?subscriber=ann@example.org", headers=TOKEN)
    assert answer.status_code == 409
    assert "Nothing new for that reader" in answer.json()["detail"]


def test_preview_with_a_bad_frequency_names_the_field(api, news):
    answer = api.get("/api/newsletters/news/preview?frequency=hourly", headers=TOKEN)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "frequency"]


# -- send now -------------------------------------------------------------------------------


def _not_at_a_minute_boundary() -> None:
    """Both presses must fall in one minute; start afresh if this one is nearly over."""
    now = utcnow()
    if now.second >= 58:
        time.sleep(60.5 - now.second - now.microsecond / 1e6)


def test_send_now_twice_in_a_minute_answers_the_same_edition_and_makes_one(api, news, session):
    _not_at_a_minute_boundary()
    first = api.post("/api/newsletters/news/editions", headers=TOKEN)
    again = api.post("/api/newsletters/news/editions", headers=TOKEN, json={"frequency": "daily"})
    assert first.status_code == again.status_code == 202
    assert first.json()["new"] is True and again.json()["new"] is False
    edition = first.json()["edition"]
    assert again.json()["edition"]["id"] == edition["id"]
    assert edition["newsletter"] == "news" and edition["frequency"] == "daily"
    assert edition["status"] == "created" and edition["counts"] == {}
    assert session.scalar(select(func.count()).select_from(Digest)) == 1


def test_send_now_refuses_an_unknown_frequency_or_field_and_makes_nothing(api, news, session):
    for body, field in (({"frequency": "hourly"}, "frequency"), ({"when": "now"}, "when")):
        answer = api.post("/api/newsletters/news/editions", headers=TOKEN, json=body)
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["body", field]
    assert session.scalar(select(func.count()).select_from(Digest)) == 0


# -- status, listing ------------------------------------------------------------------------


def test_edition_status_and_the_newsletters_editions_newest_first(api, news, session, settings):
    older = prepared(session, settings, news)
    newer = schedule.create_edition(
        session, news.id, Frequency.WEEKLY, utcnow().replace(second=0, microsecond=0)
    ).id
    session.commit()

    one = api.get(f"/api/editions/{older}", headers=TOKEN).json()
    assert one["status"] == "sending" and one["counts"] == {"queued": 3}

    first = api.get("/api/newsletters/news/editions?limit=1", headers=TOKEN).json()
    assert [e["id"] for e in first["items"]] == [newer] and first["next_cursor"]
    rest = api.get(
        f"/api/newsletters/news/editions?limit=1&cursor={first['next_cursor']}", headers=TOKEN
    ).json()
    assert [e["id"] for e in rest["items"]] == [older] and rest["next_cursor"] is None


def test_deliveries_filter_by_status_and_page_by_id(api, news, session, settings):
    digest_id = prepared(session, settings, news, n_readers=4)  # 7 readers, all queued
    set_status(session, digest_id, "extra0", DeliveryStatus.SENT)  # extra00..extra03

    seen: list[str] = []
    cursor = None
    while True:
        query = f"status=queued&limit=2{f'&cursor={cursor}' if cursor else ''}"
        page = api.get(f"/api/editions/{digest_id}/deliveries?{query}", headers=TOKEN).json()
        assert len(page["items"]) <= 2
        seen += [d["address"] for d in page["items"]]
        assert {d["status"] for d in page["items"]} <= {"queued"}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["ann@example.org", "bob@example.org", "cy@example.org"]

    both = api.get(
        f"/api/editions/{digest_id}/deliveries?status=sent&status=queued", headers=TOKEN
    ).json()
    assert len(both["items"]) == 7
    row = both["items"][0]
    assert set(row) >= {"address", "status", "attempts", "smtp_code", "smtp_reply"}
    assert set(row) >= {"message_id", "sent_at"}


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("status=posted", ["query", "status", 0]),
        ("cursor=not-a-cursor", ["body", "cursor"]),
        ("limit=0", ["query", "limit"]),
    ],
)
def test_deliveries_refuse_a_bad_filter_and_name_it(api, news, session, settings, query, loc):
    digest_id = prepared(session, settings, news)
    answer = api.get(f"/api/editions/{digest_id}/deliveries?{query}", headers=TOKEN)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == loc


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_stops_waiting_rows_leaves_sent_and_sending_alone_and_releases_articles(
    api, news, session, settings
):
    digest_id = prepared(session, settings, news, n_readers=2)  # 5 readers
    set_status(session, digest_id, "ann@", DeliveryStatus.SENT)
    set_status(session, digest_id, "bob@", DeliveryStatus.SENDING)
    set_status(session, digest_id, "cy@", DeliveryStatus.DEFERRED)
    before = reserved(session, digest_id)

    answer = api.post(f"/api/editions/{digest_id}/cancel", headers=TOKEN)

    assert answer.status_code == 200
    report = answer.json()
    assert report["cancelled"] == 3 and report["released"] == 3 and report["still_sending"] == 1
    assert report["edition"]["status"] == "cancelled"
    assert by_address(api, digest_id) == {
        "ann@example.org": "sent",
        "bob@example.org": "sending",
        "cy@example.org": "cancelled",
        "extra00@example.org": "cancelled",
        "extra01@example.org": "cancelled",
    }
    # Ann (sent) and Bob (in flight) keep their reservations; the cancelled give theirs back.
    session.expire_all()
    assert 0 < reserved(session, digest_id) < before
    kept = {sub_id for sub_id, _ in reservations.reserved_articles(session)}
    assert sorted(kept) == sorted(
        session.scalars(
            select(Delivery.subscription_id).where(
                Delivery.digest_id == digest_id,
                Delivery.status.in_((DeliveryStatus.SENT, DeliveryStatus.SENDING)),
            )
        ).all()
    )
    # Nothing cancelled is ever handed to a sender, however late the claim.
    due = claims.due_rows(session, digest_id, 0, 10**9, limit=100, now=utcnow() + marks.MAX_BACKOFF)
    assert due == []


def test_cancel_again_is_harmless_and_a_finished_edition_is_409(api, news, session, settings):
    digest_id = prepared(session, settings, news)
    assert api.post(f"/api/editions/{digest_id}/cancel", headers=TOKEN).json()["cancelled"] == 3
    again = api.post(f"/api/editions/{digest_id}/cancel", headers=TOKEN)
    assert again.status_code == 200 and again.json()["cancelled"] == 0

    done = prepared(session, settings, make_newsletter(session, "other"))
    session.execute(update(Digest).where(Digest.id == done).values(status="done"))
    session.commit()
    refused = api.post(f"/api/editions/{done}/cancel", headers=TOKEN)
    assert refused.status_code == 409
    assert refused.json() == {
        "detail": f"Edition {done} has finished sending; there is nothing to cancel."
    }


def test_a_cancelled_edition_that_was_never_prepared_prepares_into_nothing(
    api, news, session, settings
):
    edition = schedule.create_now(session, news, Frequency.DAILY)
    session.commit()
    assert api.post(f"/api/editions/{edition.id}/cancel", headers=TOKEN).status_code == 200
    session.expire_all()
    late = prepare.prepare(session, settings, EmailRenderer(settings.email_templates), edition.id)
    session.commit()
    assert late.ranges == [] and late.queued == 0
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_cli_cancel_reports_what_it_stopped_and_refuses_unknown_editions(news, session, settings):
    digest_id = prepared(session, settings, news)
    result = CliRunner().invoke(main, ["digest", "cancel", str(digest_id)])
    assert result.exit_code == 0, result.output
    assert f"edition {digest_id} cancelled: 3 delivery(ies) stopped" in " ".join(
        result.output.split()
    )
    missing = CliRunner().invoke(main, ["digest", "cancel", "999"])
    assert missing.exit_code == 1 and "There is no edition 999." in missing.output


# -- end to end: a real worker, a real SMTP server held mid-send -----------------------------


def test_cancel_during_a_send_stops_the_rest_and_the_message_in_flight_still_lands(
    news, session, settings, smtp_server, monkeypatch, celery_worker
):
    """Batches of one row; the SMTP server holds the second message until the cancel is in."""
    settings = configure(monkeypatch, send_batch_size="1")
    for i in range(3):
        add_reader(session, news, f"late{i}@example.org")
    session.commit()
    entered, release = threading.Event(), threading.Event()
    count = 0

    def hold_the_second(envelope):
        nonlocal count
        count += 1
        if count == 2:
            entered.set()
            release.wait(20)
        return None

    smtp_server.handler.script.on_data = hold_the_second
    with TestClient(create_app(settings)) as api:
        made = api.post("/api/newsletters/news/editions", headers=TOKEN).json()
        digest_id = made["edition"]["id"]
        assert made["new"] is True
        try:
            wait_for(entered.is_set, timeout=30)
            report = api.post(f"/api/editions/{digest_id}/cancel", headers=TOKEN).json()
        finally:
            release.set()  # never leave the SMTP server held, whatever failed
        assert report["cancelled"] == 4 and report["still_sending"] == 1

        def settled():
            counts = api.get(f"/api/editions/{digest_id}", headers=TOKEN).json()["counts"]
            return counts if not counts.get("sending") else None

        assert wait_for(settled, timeout=30) == {"sent": 2, "cancelled": 4}
        statuses = by_address(api, digest_id)
    sent = sorted(a for a, s in statuses.items() if s == "sent")
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sent
    # A send task that comes late (a retry, the tick) finds nothing to send.
    tasks_result = loop.send_range(session, settings, digest_id, 0, 10**9)
    assert tasks_result.sent == 0 and len(smtp_server.received) == 2
    assert session.get(Digest, digest_id).status == "cancelled"


def test_rows_that_come_back_after_a_cancel_are_cancelled_by_the_tick(api, news, session, settings):
    """A late 4xx defers a row that was in flight; lease recovery requeues a dead worker's
    rows. The once-a-minute tick finishes the cancel without a second press."""
    from mailer import tasks

    digest_id = prepared(session, settings, news)
    set_status(session, digest_id, "ann", DeliveryStatus.SENDING)
    assert api.post(f"/api/editions/{digest_id}/cancel", headers=TOKEN).status_code == 200
    set_status(session, digest_id, "ann", DeliveryStatus.DEFERRED)  # the late 4xx
    set_status(session, digest_id, "bob", DeliveryStatus.QUEUED)  # lease recovery
    before = reserved(session, digest_id)

    tasks.digest_tick()

    session.expire_all()
    assert set(by_address(api, digest_id).values()) == {"cancelled"}
    assert reserved(session, digest_id) < before
