"""Where reports wait: a Maildir or an IMAP mailbox, polled and filed once each.

Each message is handed to `outcomes.handle_raw` and then filed under
.processed or .ignored, so a poll never reads the same report twice.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import os
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mailer.bounces.outcomes import Outcome, handle_raw
from mailer.config import Settings
from mailer.db import session_scope
from mailer.mail.transport import cleartext_login_refusal
from mailer.mail.verp import return_paths

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Outcome]


@dataclass
class PollResult:
    seen: int = 0
    applied: int = 0
    ignored: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.seen += 1
        self.outcomes.append(outcome)
        if outcome.applied:
            self.applied += 1
        else:
            self.ignored += 1


def _maildir_folder(root: Path, name: str) -> Path:
    folder = root / f".{name}"
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def poll_maildir(root: Path, handle: Handler, limit: int = 1000) -> PollResult:
    """Handle each message waiting in a Maildir, then file it under .processed or .ignored.

    A message is claimed by renaming it into tmp/ first: rename is atomic,
    so two pollers never handle the same file. If handling raises (the
    database is down), the message goes back where it was for the next poll.
    """
    result = PollResult()
    if not (root / "new").is_dir() or not (root / "cur").is_dir():
        raise FileNotFoundError(f"{root} is not a Maildir (no new/ and cur/)")
    waiting = sorted(p for d in ("new", "cur") for p in (root / d).iterdir() if p.is_file())
    for path in waiting[:limit]:
        claimed = root / "tmp" / f"mailer-claim-{secrets.token_hex(6)}-{path.name}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:  # another poller took it
            continue
        try:
            outcome = handle(claimed.read_bytes())
        except BaseException:
            os.rename(claimed, path)
            raise
        folder = _maildir_folder(root, "processed" if outcome.applied else "ignored")
        name = path.name.split(":", 1)[0] + ":2,S"
        os.rename(claimed, folder / "cur" / name)
        result.add(outcome)
        log.info("bounce %s: %s (%s)", path.name, outcome.result, outcome.reason)
    return result


def poll_imap(url: str, handle: Handler, limit: int = 500, timeout: float = 30.0) -> PollResult:
    """Handle each message in an IMAP mailbox (imaps://user:pass@host/INBOX), then delete it.

    A message is deleted only after its outcome was committed by `handle`;
    if handling raises, it and the rest stay for the next poll, and those
    handled before it are still expunged. A refused login or a session the
    server breaks is a ValueError naming the server, like a missing mailbox.
    """
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    conn: imaplib.IMAP4
    if parts.scheme == "imaps":
        conn = imaplib.IMAP4_SSL(
            host, parts.port or 993, ssl_context=ssl.create_default_context(), timeout=timeout
        )
    elif parts.scheme == "imap":
        conn = imaplib.IMAP4(host, parts.port or 143, timeout=timeout)
        if "STARTTLS" in conn.capabilities:
            conn.starttls(ssl_context=ssl.create_default_context())
    else:
        raise ValueError(
            f"the bounce mailbox URL must be imaps:// or imap://, got {parts.scheme!r}"
        )
    result = PollResult()
    try:
        why = cleartext_login_refusal(conn.socket(), host)
        if why:
            raise ValueError(
                f"{why}: the IMAP server offers no STARTTLS; use imaps:// (only a mailbox "
                "on a loopback address gets a login without TLS)"
            )
        conn.login(unquote(parts.username or ""), unquote(parts.password or ""))
        typ, _ = conn.select(_imap_quote(mailbox))
        if typ != "OK":
            raise ValueError(f"cannot open the IMAP mailbox {mailbox!r}")
        # UNDELETED: a report handled and flagged by a poll that then broke off is not
        # read (and counted) again if that poll could not expunge it.
        typ, data = conn.uid("SEARCH", "UNDELETED")
        uids = data[0].split() if typ == "OK" and data and data[0] else []
        for uid in uids[:limit]:
            typ, fetched = conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next(
                (item[1] for item in fetched if isinstance(item, tuple) and len(item) > 1), None
            )
            if typ != "OK" or not isinstance(raw, bytes):
                continue
            outcome = handle(raw)
            conn.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
            result.add(outcome)
            log.info("bounce uid %s: %s (%s)", uid.decode(), outcome.result, outcome.reason)
    except imaplib.IMAP4.error as exc:  # a refused login, a broken session: say which server
        raise ValueError(f"the IMAP server {host} said: {_text(exc)}") from exc
    finally:
        # What was handled goes even when a later report broke the poll off.
        with contextlib.suppress(Exception):
            if conn.state == "SELECTED":
                conn.expunge()
        with contextlib.suppress(Exception):
            conn.logout()
    return result


def _text(exc: imaplib.IMAP4.error) -> str:
    """imaplib's errors carry the server's reply as bytes."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def _imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def handler_for(settings: Settings) -> Handler:
    """One committed unit of work per report, so one bad report can't undo the others."""
    verp = return_paths(settings)

    def handle(raw: bytes) -> Outcome:
        with session_scope(settings.database) as session:
            return handle_raw(session, verp, raw, soft_limit=settings.soft_bounce_limit)

    return handle


def mailbox_configured(settings: Settings) -> bool:
    return bool(settings.bounce_maildir or settings.bounce_imap_url)


def poll(settings: Settings) -> PollResult:
    """Read every configured bounce mailbox once."""
    handle = handler_for(settings)
    total = PollResult()
    if settings.bounce_maildir:
        for outcome in poll_maildir(settings.bounce_maildir, handle).outcomes:
            total.add(outcome)
    if settings.bounce_imap_url:
        url = settings.bounce_imap_url.get_secret_value()
        for outcome in poll_imap(url, handle).outcomes:
            total.add(outcome)
    return total
