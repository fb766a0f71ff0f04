"""Return paths we can trust, and reading what MTAs and mailbox providers send back."""

from __future__ import annotations

import pytest

from mailer.bounces.outcomes import BounceEvent
from mailer.bounces.reports import NotAReport, parse_report
from mailer.mail.verp import ForgedReturnPath, ReturnPaths, VerpTag
from tests.fixtures.bounces import load

VERP = ReturnPaths("a-secret")
READER = "gone@example.com"


def test_a_delivery_return_path_names_the_delivery_and_lives_at_the_from_domain():
    address = VERP.for_delivery(42, "Weekly News <news@Example.org>")
    assert address.startswith("bounces+d42-") and address.endswith("@Example.org")
    assert VERP.parse(address) == VerpTag("d", 42)
    assert VERP.parse(f"<{address.upper()}>") == VerpTag("d", 42)  # MTAs may change case


def test_a_notice_return_path_is_told_apart_from_a_delivery():
    assert VERP.parse(VERP.for_notice(42, "news@example.org")) == VerpTag("n", 42)
    assert VERP.for_notice(42, "news@example.org") != VERP.for_delivery(42, "news@example.org")


def test_a_configured_bounce_address_replaces_the_default_mailbox():
    paths = ReturnPaths("a-secret", "Bounces <returns@mail.example.net>")
    address = paths.for_delivery(7, "news@example.org")
    assert address.startswith("returns+d7-") and address.endswith("@mail.example.net")
    assert paths.parse(address) == VerpTag("d", 7)


def test_a_guessed_or_edited_return_path_is_called_forged():
    genuine = VERP.for_delivery(42, "news@example.org")
    other_id = genuine.replace("+d42-", "+d43-")
    with pytest.raises(ForgedReturnPath):
        VERP.parse(other_id)
    with pytest.raises(ForgedReturnPath):
        ReturnPaths("another-secret").parse(genuine)


def test_addresses_that_are_not_return_paths_are_not_ours():
    for address in ("news@example.org", "bounces@example.org", "a+tag@example.org", ""):
        assert VERP.parse(address) is None


def test_a_postfix_bounce_is_a_hard_bounce_with_its_status_and_diagnostic():
    path = VERP.for_delivery(1, "news@example.org")
    report = parse_report(load("postfix_hard", path, READER))
    assert report.severity == "hard" and report.kind == "bounce"
    assert report.status == "5.1.1"
    assert report.recipient == READER
    assert "User unknown" in report.diagnostic
    assert path in report.return_paths


def test_an_exim_delay_warning_is_a_soft_bounce():
    path = VERP.for_delivery(1, "news@example.org")
    report = parse_report(load("exim_delayed", path, READER))
    assert (report.severity, report.status) == ("soft", "4.2.2")
    assert "Mailbox full" in report.diagnostic
    assert path in report.return_paths


def test_an_arf_abuse_report_is_a_complaint_traced_by_its_original_mail_from():
    path = VERP.for_delivery(1, "news@example.org")
    report = parse_report(load("arf_complaint", path, READER))
    assert report.severity == "complaint" and report.kind == "complaint"
    assert report.recipient == READER
    assert report.return_paths[0] == path


def test_crlf_line_ends_read_the_same():
    path = VERP.for_delivery(1, "news@example.org")
    raw = load("postfix_hard", path, READER).replace(b"\n", b"\r\n")
    assert parse_report(raw).status == "5.1.1"


@pytest.mark.parametrize(
    ("fixture", "why"),
    [
        ("auto_reply", "not a multipart/report"),
        ("delivered", "no failure"),
        ("malformed_dsn", "no per-recipient fields"),
        ("arf_not_spam", "not a complaint"),
    ],
)
def test_reports_that_are_not_failures_say_why_they_are_not(fixture, why):
    with pytest.raises(NotAReport, match=why):
        parse_report(load(fixture, VERP.for_delivery(1, "news@example.org"), READER))


def test_junk_is_not_a_report():
    for raw in (b"", b"   \n", b"\xff\xfe garbage \x00", b"Content-Type: multipart/report\n\n"):
        with pytest.raises(NotAReport):
            parse_report(raw)


def test_a_json_event_takes_its_severity_from_the_status_class():
    assert BounceEvent("bounce", READER, "5.1.1").severity() == "hard"
    assert BounceEvent("bounce", READER, "4.2.2").severity() == "soft"
    assert BounceEvent("bounce", READER).severity() == "hard"
    assert BounceEvent("complaint", READER).severity() == "complaint"
    for status in ("2.0.0", "550", "five"):
        with pytest.raises(ValueError, match=r"4\.x\.x or 5\.x\.x"):
            BounceEvent("bounce", READER, status).severity()
