"""The SMTP password never crosses a network in the clear.

An `smtp://user:pw@host` relay that offers no STARTTLS used to get AUTH PLAIN
anyway: the password, base64, on the wire. Now a login without TLS is made
only to a loopback address; anywhere else the connection is refused with a
clear error before AUTH, and nothing is lost: the notice stays queued, the
edition's rows stay queued and unattempted, for a retry once the relay is
fixed. The relay and the sends run on a test host of their own (a network
namespace, tests/helpers/netns.py) so the relay can sit on an address that
is not loopback.
"""

from __future__ import annotations

from tests.helpers.netns import NOT_LOOPBACK, run_in_netns

MODULE = "tests.helpers.netns_smtp"


def test_no_login_in_the_clear_to_a_relay_that_is_not_on_loopback(tmp_path):
    out = run_in_netns(NOT_LOOPBACK, MODULE, NOT_LOOPBACK, str(tmp_path))
    assert out["received"] == []  # no login, no mail
    assert out["notice"].startswith("temporary failure")
    status, error = out["notice_row"]
    assert status == "queued"
    assert (
        f"refusing to send the SMTP password to {NOT_LOOPBACK} ({NOT_LOOPBACK}) in the clear"
        in error
    )
    assert "STARTTLS" in error and "smtps://" in error
    assert "refusing to send the SMTP password" in out["digest"]
    assert out["delivery_rows"] == ["queued/0"]  # every row waits for a retry, unattempted


def test_a_relay_on_loopback_still_gets_the_login_without_tls(tmp_path):
    out = run_in_netns(NOT_LOOPBACK, MODULE, "127.0.0.1", str(tmp_path))
    assert out["notice"] == "sent" and out["digest"] == 3
    assert [login for login, _ in out["received"]] == ["mailer@example.org"] * 4
    assert out["delivery_rows"] == ["sent/1"]


def test_no_imap_login_in_the_clear_to_a_bounce_mailbox_that_is_not_on_loopback():
    """The bounce mailbox's password is kept the same way (a private Dovecot without TLS)."""
    out = run_in_netns(NOT_LOOPBACK, "tests.helpers.netns_imap", NOT_LOOPBACK)
    assert out["poll"].startswith(f"refusing to send the password to {NOT_LOOPBACK}")
    assert "imaps://" in out["poll"]
    assert out["left"] == 1  # the report waits for a poll that may log in


def test_a_bounce_mailbox_on_loopback_still_gets_the_login_without_tls():
    out = run_in_netns(NOT_LOOPBACK, "tests.helpers.netns_imap", "127.0.0.1")
    assert out == {"poll": "read 1", "left": 0}
