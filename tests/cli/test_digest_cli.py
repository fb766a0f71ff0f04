"""`mailer digest …` against the real database, broker, worker and SMTP server."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailer.models import Delivery, Digest
from tests.helpers.cli import run
from tests.helpers.editions import add_article, add_reader, make_newsletter


@pytest.fixture
def newsletter(session, settings):
    nl = make_newsletter(session)
    add_reader(session, nl, "ann@example.org", topics=["Python"])
    add_reader(session, nl, "bob@example.org")
    add_article(session, nl, "Python 4 released", topics=["Python"])
    add_article(session, nl, "Weather report", hours_ago=3)
    session.commit()
    return nl


def editions(session) -> tuple[int, int]:
    return (
        session.scalar(select(func.count()).select_from(Digest)),
        session.scalar(select(func.count()).select_from(Delivery)),
    )


def test_preview_writes_the_html_a_reader_would_get_and_records_nothing(
    session, newsletter, tmp_path
):
    out = tmp_path / "ann.html"
    result = run("digest", "preview", "news", "--email", "ann@example.org", "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Python 4 released" in page and "Weather report" not in page
    assert "ann@example.org" in page and "/unsubscribe/" in page
    assert "1 article(s)" in " ".join(result.output.split())  # rich wraps lines
    everyone = run("digest", "preview", "news")
    assert "Python 4 released" in everyone.output and "Weather report" in everyone.output
    assert "/unsubscribe/" not in everyone.output
    assert editions(session) == (0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["preview", "nope"], "no newsletter 'nope'"),
        (["preview", "news", "--email", "stranger@example.org"], "No subscriber"),
        (["test", "news", "--to", "not an address"], "not valid"),
        (["status", "12345"], "no edition 12345"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    session, newsletter, smtp_server, args, message
):
    result = run("digest", *args)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert editions(session) == (0, 0) and smtp_server.received == []


def test_preview_with_nothing_new_says_so(session, settings):
    make_newsletter(session)
    session.commit()
    result = run("digest", "preview", "news")
    assert result.exit_code == 1 and "Nothing new" in result.output


def test_test_send_goes_to_one_address_marked_and_unrecorded(session, newsletter, smtp_server):
    result = run("digest", "test", "news", "--to", "editor@example.org")
    assert result.exit_code == 0, result.output
    [mail] = smtp_server.received
    assert mail.rcpt_tos == ["editor@example.org"]
    assert mail.message["Subject"].startswith("[TEST] The News: ")
    assert editions(session) == (0, 0)


def test_send_wait_delivers_and_status_counts(session, newsletter, smtp_server, celery_worker):
    result = run("digest", "send", "news", "--wait", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert "2 to send" in result.output
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        "ann@example.org",
        "bob@example.org",
    ]
    status = run("digest", "status")
    assert status.exit_code == 0
    [edition_id] = session.scalars(select(Digest.id)).all()
    one = run("digest", "status", str(edition_id))
    assert one.exit_code == 0 and "news" in one.output
    # Sending again right away makes no new edition and no new mail.
    again = run("digest", "send", "news")
    assert again.exit_code == 0 and "already made" in again.output
    assert len(smtp_server.received) == 2
