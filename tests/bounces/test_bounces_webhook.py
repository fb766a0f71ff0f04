"""POST /api/bounces over real HTTP: raw reports, parsed JSON events, and what it refuses."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from mailer.mail import verp
from mailer.models import Status, Subscription, Suppression
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from tests.conftest import API_TOKEN as TOKEN
from tests.fixtures.bounces import load

READER = "gone@example.com"


@pytest.fixture
def reader(session):
    newsletters.create_newsletter(
        session, "weekly", "Weekly News", "Weekly News <news@example.org>"
    )
    out = subs.subscribe(session, email=READER, newsletter="weekly")
    session.commit()
    return out


@pytest.fixture
def http(live_server):
    with httpx.Client(base_url=live_server, timeout=10) as client:
        yield client


def status(session):
    session.expire_all()
    return session.scalars(select(Subscription)).one().status


def suppressed(session):
    session.expire_all()
    return len(session.scalars(select(Suppression)).all())


def test_a_raw_bounce_report_posted_by_the_mta_is_applied(http, session, settings, reader):
    path = verp.return_paths(settings).for_notice(reader.notification_ids[0], "news@example.org")
    answer = http.post(
        "/api/bounces",
        content=load("postfix_hard", path, READER),
        headers={**TOKEN, "Content-Type": "message/rfc822"},
    )
    assert answer.status_code == 200
    assert answer.json()["result"] == "hard-bounce" and answer.json()["applied"] is True
    assert status(session) is Status.BOUNCED and suppressed(session) == 1


def test_a_forged_raw_report_is_answered_and_changes_nothing(http, session, settings, reader):
    path = verp.ReturnPaths("not-our-secret").for_notice(1, "news@example.org")
    answer = http.post(
        "/api/bounces",
        content=load("postfix_hard", path, READER),
        headers={**TOKEN, "Content-Type": "message/rfc822"},
    )
    assert answer.status_code == 200
    assert answer.json()["result"] == "forged" and answer.json()["applied"] is False
    assert status(session) is Status.PENDING and suppressed(session) == 0


def test_a_json_complaint_from_an_email_service_suppresses_the_address(http, session, reader):
    answer = http.post(
        "/api/bounces",
        json={"type": "complaint", "email": READER.upper(), "diagnostic": "abuse"},
        headers=TOKEN,
    )
    assert answer.status_code == 200 and answer.json()["result"] == "complaint"
    assert status(session) is Status.COMPLAINED and suppressed(session) == 1


def test_a_json_soft_bounce_counts_without_suppressing(http, session, reader):
    answer = http.post(
        "/api/bounces",
        json={"type": "bounce", "email": READER, "status": "4.2.2", "diagnostic": "mailbox full"},
        headers=TOKEN,
    )
    assert answer.json()["result"] == "soft-bounce"
    session.expire_all()
    assert session.scalars(select(Subscription)).one().soft_bounces == 1
    assert status(session) is Status.PENDING and suppressed(session) == 0


def test_a_json_bounce_for_an_address_we_never_had_changes_nothing(http, session, reader):
    answer = http.post(
        "/api/bounces", json={"type": "bounce", "email": "stranger@example.net"}, headers=TOKEN
    )
    assert answer.status_code == 200
    assert answer.json()["result"] == "unknown-address" and answer.json()["applied"] is False
    assert suppressed(session) == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not JSON"),
        pytest.param(b'{"type": "unsubscribe", "email": "gone@example.com"}', id="unknown type"),
        pytest.param(b'{"type": "bounce"}', id="no address"),
        pytest.param(
            b'{"type": "bounce", "email": "gone@example.com", "status": "250"}',
            id="not a failure status",
        ),
    ],
)
def test_json_we_cannot_read_is_refused_with_422_and_changes_nothing(http, session, reader, body):
    answer = http.post(
        "/api/bounces", content=body, headers={**TOKEN, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["detail"]
    assert status(session) is Status.PENDING and suppressed(session) == 0


def test_without_the_api_token_nothing_is_read(http, session, reader):
    answer = http.post("/api/bounces", json={"type": "complaint", "email": READER})
    assert answer.status_code == 401
    wrong = http.post(
        "/api/bounces",
        json={"type": "complaint", "email": READER},
        headers={"Authorization": "Bearer nope"},
    )
    assert wrong.status_code == 401
    assert status(session) is Status.PENDING and suppressed(session) == 0
