"""The suppression list has a remedy, over real HTTP, SMTP and a Celery worker.

An address that asked to stop and was erased comes back by its owner's own
double opt-in: the confirmation goes out, and confirming lifts the entry on
record. A bounce or a complaint stays until an operator lifts it, through
`mailer suppression lift` or `DELETE /api/suppressions/{address}`, on record
too; `list` shows what is kept (the address only while we hold it).
"""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer.cli import main
from mailer.models import Notification, Status, Suppression, SuppressionEvent
from mailer.operators import subscribers as subscribers_ops
from mailer.readers import subscriptions as subs
from mailer.readers import suppressions
from mailer.readers.addresses import address_hash
from mailer.readers.importer import import_csv
from tests.helpers.editions import add_reader, make_newsletter
from tests.helpers.journey import link, mails_to

AUTH = {"Authorization": "Bearer test-api-token"}
BACK = "back@example.org"


@pytest.fixture
def http(live_server):
    with httpx.Client(base_url=live_server, timeout=10, headers=AUTH) as client:
        yield client


def entries(session) -> dict[str, str]:
    session.expire_all()
    return {s.address_hash: s.reason for s in session.scalars(select(Suppression))}


def lifts(session) -> list[SuppressionEvent]:
    session.expire_all()
    return list(session.scalars(select(SuppressionEvent).order_by(SuppressionEvent.id)))


def erased_after_unsubscribing(session, nl, email: str) -> None:
    sub = add_reader(session, nl, email)
    subs.change_status(session, sub, Status.UNSUBSCRIBED, source="unsubscribe-link")
    subscribers_ops.erase_subscriber(session, email)
    session.commit()


def test_an_erased_reader_who_subscribes_again_is_sent_the_confirmation_which_lifts_the_entry(
    session, settings, http, smtp_server, celery_worker
):
    nl = make_newsletter(session)
    erased_after_unsubscribing(session, nl, BACK)
    assert entries(session) == {address_hash(BACK): "unsubscribed-then-erased"}

    answer = http.post("/subscribe", json={"email": BACK, "newsletter": nl.slug})
    assert answer.status_code == 202
    (confirm,) = mails_to(smtp_server, BACK, 1)
    # Until the owner confirms, the entry stands: only the confirmation goes out.
    assert entries(session) == {address_hash(BACK): "unsubscribed-then-erased"}

    assert httpx.post(link(confirm.message, "confirm"), timeout=10).status_code == 200
    assert entries(session) == {}
    (lifted,) = lifts(session)
    assert (lifted.address_hash, lifted.reason, lifted.lifted_by, lifted.ip) == (
        address_hash(BACK),
        "unsubscribed-then-erased",
        "double-opt-in",
        "127.0.0.1",
    )
    welcome = mails_to(smtp_server, BACK, 2)[1]
    assert "Welcome" in welcome.message["Subject"]
    # Erased again, the record of that lift (with the IP they confirmed from) goes too.
    subscribers_ops.erase_subscriber(session, BACK)
    session.commit()
    assert lifts(session) == []


@pytest.mark.parametrize("reason", ["complaint", "hard-bounce"])
def test_a_bounce_or_complaint_stays_whatever_the_form_is_sent_and_says_so_to_everyone(
    session, settings, http, smtp_server, celery_worker, reason
):
    make_newsletter(session)
    suppressions.suppress(session, "blocked@example.org", reason, source="bounce")
    session.commit()

    blocked = http.post("/subscribe", json={"email": "blocked@example.org", "newsletter": "news"})
    fresh = http.post("/subscribe", json={"email": "fresh@example.org", "newsletter": "news"})
    mails_to(smtp_server, "fresh@example.org", 1)  # the worker took both requests by now

    # One answer for both (the form tells nobody who is blocked), and it is honest.
    assert blocked.json() == fresh.json() and blocked.status_code == fresh.status_code == 202
    assert "bounced or reported our mail as spam" in blocked.json()["message"]
    assert smtp_server.to("blocked@example.org") == []
    assert entries(session) == {address_hash("blocked@example.org"): reason}


def test_an_operators_import_never_lifts_an_entry(session, settings, tmp_path):
    nl = make_newsletter(session)
    erased_after_unsubscribing(session, nl, BACK)
    path = tmp_path / "list.csv"
    path.write_text(f"email\n{BACK}\n")
    report = import_csv(session, path, nl.slug, confirmed=True)
    session.commit()
    assert report.suppressed == 1 and report.added == 0
    assert entries(session) == {address_hash(BACK): "unsubscribed-then-erased"}


def test_the_api_lists_entries_with_the_address_only_while_it_is_held_and_lifts_on_record(
    session, settings, http
):
    nl = make_newsletter(session)
    bounced = add_reader(session, nl, "Bounced@Example.org")
    subs.change_status(session, bounced, Status.BOUNCED, source="bounce")
    suppressions.suppress(session, "bounced@example.org", "hard-bounce", source="smtp")
    erased_after_unsubscribing(session, nl, BACK)

    page = http.get("/api/suppressions").json()
    shown = {(i["address"], i["reason"], i["lifted_by_opt_in"]) for i in page["items"]}
    assert shown == {
        ("Bounced@example.org", "hard-bounce", False),  # as typed; the domain lower-cased
        (None, "unsubscribed-then-erased", True),  # erased: only the hash is kept
    }
    assert page["next_cursor"] is None
    assert http.get("/api/suppressions", params={"reason": "hard-bounce"}).json()["items"][0][
        "hash"
    ] == address_hash("bounced@example.org")

    lifted = http.delete("/api/suppressions/bounced@EXAMPLE.org")
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["lifted"]["reason"] == "hard-bounce" and lifted.json()["by"] == "operator"
    # An erased address is named by the hash the list shows.
    assert http.delete(f"/api/suppressions/{address_hash(BACK)}").status_code == 200
    assert http.delete("/api/suppressions/bounced@example.org").status_code == 404
    assert entries(session) == {}
    assert [(e.reason, e.lifted_by, e.ip) for e in lifts(session)] == [
        ("hard-bounce", "operator", "127.0.0.1"),
        ("unsubscribed-then-erased", "operator", "127.0.0.1"),
    ]
    # The subscription keeps its status: lifting is not subscribing anyone.
    session.expire_all()
    assert session.get_one(subs.Subscription, bounced.id).status is Status.BOUNCED

    schema = http.get("/openapi.json").json()["paths"]
    assert "get" in schema["/api/suppressions"]
    assert {"200", "404", "401"} <= set(
        schema["/api/suppressions/{address}"]["delete"]["responses"]
    )


def test_the_cli_lists_and_lifts_on_record(session, settings):
    nl = make_newsletter(session)
    sub = add_reader(session, nl, "gone@example.org")
    subs.change_status(session, sub, Status.COMPLAINED, source="arf")
    suppressions.suppress(session, "gone@example.org", "complaint", source="complaint")
    session.commit()

    listed = CliRunner().invoke(main, ["suppression", "list"])
    assert listed.exit_code == 0, listed.output
    assert "gone@example.org" in listed.output and "complaint" in listed.output
    assert address_hash("gone@example.org")[:16] in listed.output

    lifted = CliRunner().invoke(
        main, ["suppression", "lift", "gone@example.org", "--reason", "asked by phone", "--yes"]
    )
    assert lifted.exit_code == 0, lifted.output
    assert "lifted: gone@example.org" in lifted.output
    assert [(e.reason, e.lifted_by, e.detail) for e in lifts(session)] == [
        ("complaint", "operator", "asked by phone")
    ]
    again = CliRunner().invoke(main, ["suppression", "lift", "gone@example.org", "--yes"])
    assert again.exit_code != 0 and "not on the suppression list" in again.output


def test_a_complaint_about_the_confirmation_outranks_an_erased_opt_out(session, settings):
    """An entry the owner could lift gives way to a stronger reason that comes later."""
    nl = make_newsletter(session)
    erased_after_unsubscribing(session, nl, BACK)
    out = subs.subscribe(session, email=BACK, newsletter=nl.slug)
    assert out.state == "new" and len(out.notification_ids) == 1
    suppressions.suppress(session, BACK, "complaint", source="complaint")
    session.commit()
    assert entries(session) == {address_hash(BACK): "complaint"}
    again = subs.subscribe(session, email=BACK, newsletter=nl.slug)
    assert again.state == "suppressed"
    assert session.scalar(select(func.count()).select_from(Notification)) == 1
