"""GDPR erasure on PostgreSQL: no trace of the address in any text column of any table,
except a hash on the suppression list for a reader who had asked not to be mailed."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from mailer.cli import main
from mailer.models import (
    Article,
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Notification,
    Status,
    Subscription,
    Suppression,
    utcnow,
)
from mailer.readers import subscriptions as subs
from mailer.readers import suppressions
from mailer.readers.addresses import address_hash
from mailer.readers.newsletters import create_newsletter, ensure_topic
from mailer.web.app import create_app
from tests.conftest import API_TOKEN as TOKEN

LOCAL, DOMAIN = "zelda.quux", "erase-me.example"
ADDRESS = f"Zelda.Quux@{DOMAIN}"


@pytest.fixture
def newsletters(session):
    weekly = create_newsletter(session, "weekly", "Weekly", "Weekly <news@example.org>")
    ensure_topic(session, weekly, "Science")
    create_newsletter(session, "daily", "Daily", "Daily <daily@example.org>")
    session.commit()
    return weekly


def leave_traces(session, newsletter, *, unsubscribe: bool) -> None:
    """A reader with history everywhere: consent IPs, audit, notices, a delivery, sent articles."""
    weekly = subs.subscribe(
        session, email=ADDRESS, newsletter="weekly", topics=["science"], ip="198.51.100.7"
    )
    sub = session.get_one(Subscription, weekly.subscription_id)
    subs.change_status(session, sub, Status.ACTIVE, source="confirm-link", ip="198.51.100.7")
    sub.consent_ip = "198.51.100.7"
    subs.subscribe(session, email=ADDRESS, newsletter="daily", confirmed=True, source="import:x")
    now = utcnow()
    article = Article(
        newsletter_id=newsletter.id,
        source="api",
        guid="g1",
        url="https://example.org/a",
        title="A",
        published_at=now,
    )
    digest = Digest(
        newsletter_id=newsletter.id,
        frequency=Frequency.WEEKLY,
        window_start=now - timedelta(days=7),
        window_end=now,
    )
    session.add_all([article, digest])
    session.flush()
    session.add(
        Delivery(
            digest_id=digest.id,
            subscription_id=sub.id,
            status=DeliveryStatus.SENT,
            smtp_code=250,
            smtp_reply=f"250 2.0.0 OK queued for <{ADDRESS}>",
            message_id=f"<1.{LOCAL}@mailer.test>",
        )
    )
    session.add(
        Notification(subscription_id=sub.id, kind="welcome", last_error=f"4.2.2 {ADDRESS} full")
    )
    if unsubscribe:
        subs.change_status(session, sub, Status.UNSUBSCRIBED, source="unsubscribe-link")
    session.commit()


def traces(session, *needles: str) -> list[str]:
    """Every (table.column) whose text, cast from any text-like type, holds one of the needles."""
    columns = session.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN "
            "('text', 'character varying', 'character', 'json', 'jsonb')"
        )
    ).all()
    assert len(columns) > 30, "the scan must cover the whole schema"
    found = []
    for table, column in columns:
        for needle in needles:
            hit = session.scalar(
                text(f'SELECT count(*) FROM "{table}" WHERE "{column}"::text ILIKE :n'),
                {"n": f"%{needle}%"},
            )
            if hit:
                found.append(f"{table}.{column} ~ {needle}")
    return found


PARTS = (ADDRESS, LOCAL, DOMAIN, "198.51.100.7")


def test_the_trace_scan_finds_a_reader_before_erasure(session, newsletters):
    leave_traces(session, newsletters, unsubscribe=False)
    found = traces(session, *PARTS)
    assert "subscriber.email ~ " + ADDRESS in found
    assert any(f.startswith("delivery.smtp_reply") for f in found)
    assert any(f.startswith("subscription_event.ip") for f in found)


def test_api_erase_leaves_no_personal_data_and_keeps_a_hash_for_who_unsubscribed(
    settings, session, newsletters
):
    leave_traces(session, newsletters, unsubscribe=True)
    with TestClient(create_app(settings)) as api:
        answer = api.delete(f"/api/subscribers/{ADDRESS.lower()}", headers=TOKEN)
        assert answer.json() == {"erased": True, "subscriptions": 2, "suppressed": True}
        assert api.get(f"/api/subscribers/{ADDRESS}", headers=TOKEN).status_code == 404
    session.expire_all()
    assert traces(session, *PARTS) == []
    for model in (Subscription, Delivery, Notification):
        assert session.scalar(select(func.count()).select_from(model)) == 0
    assert session.scalar(select(Suppression.address_hash)) == address_hash(ADDRESS)
    assert suppressions.is_suppressed(session, ADDRESS.upper())
    again = subs.subscribe(session, email=ADDRESS, newsletter="weekly", confirmed=True)
    assert again.state == "suppressed"


def test_cli_erase_of_an_active_reader_keeps_nothing_at_all(settings, session, newsletters):
    leave_traces(session, newsletters, unsubscribe=False)
    result = CliRunner().invoke(main, ["subscribers", "erase", ADDRESS, "--yes"])
    assert result.exit_code == 0, result.output
    assert "2 subscription(s)" in result.output and "suppression" not in result.output
    session.expire_all()
    assert traces(session, *PARTS) == []
    assert session.scalar(select(func.count()).select_from(Suppression)) == 0


def test_cli_erase_of_an_unknown_address_fails_and_changes_nothing(settings, session, newsletters):
    leave_traces(session, newsletters, unsubscribe=False)
    result = CliRunner().invoke(main, ["subscribers", "erase", "nobody@example.org", "--yes"])
    assert result.exit_code == 1 and "No subscriber 'nobody@example.org'" in result.output
    assert session.scalar(select(func.count()).select_from(Subscription)) == 2


def test_cli_export_is_everything_held_about_the_reader(settings, session, newsletters):
    leave_traces(session, newsletters, unsubscribe=False)
    result = CliRunner().invoke(main, ["subscribers", "export", ADDRESS])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["subscriber"]["email"] == "Zelda.Quux@erase-me.example"
    assert sorted(s["newsletter"] for s in data["subscriber"]["subscriptions"]) == [
        "daily",
        "weekly",
    ]
    assert {e["ip"] for e in data["events"]} == {"198.51.100.7", None}
    assert [d["smtp_code"] for d in data["deliveries"]] == [250]
    assert [n["kind"] for n in data["notifications"]] == ["confirm", "welcome"]
