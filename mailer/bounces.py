"""Bounces and complaints: VERP return paths, report parsing, and what they change.

Every message leaves with its own envelope sender,
`bounces+d{delivery_id}-{mac}@domain` (or `n{notification_id}` for confirm
and welcome mail), so a bounce names the message it is about without our
having to trust what the bouncing MTA quotes back. The MAC (HMAC-SHA256 of
the tag under the app secret, 8 hex digits) is what stops anyone who can
send us mail from unsubscribing people with forged bounces: a report acts
only when it carries a return path we made.

Reports come as RFC 3464 delivery status notifications (multipart/report;
report-type=delivery-status) and RFC 5965 ARF complaints (report-type=
feedback-report), from a Maildir, an IMAP mailbox or the webhook; an
authenticated webhook may also say "this address bounced" as JSON. Hard
bounces (5.x.x) and complaints suppress the address; soft bounces (4.x.x)
count on the subscription and suppress at MAILER_SOFT_BOUNCE_LIMIT in a row.
A successful send must reset that count: `reset_soft_bounces`.

Anything we can't read or can't trust (not a report, a success notice, a
forged or foreign return path, an unknown delivery) is an `Outcome` with
applied=False and changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import imaplib
import logging
import os
import re
import secrets
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from sqlalchemy import update
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.db import among, is_postgres, session_scope
from mailer.mail.messages import sender_domain
from mailer.mail.transport import cleartext_login_refusal
from mailer.models import (
    Delivery,
    DeliveryStatus,
    NoticeStatus,
    Notification,
    Status,
    Subscriber,
    Subscription,
    utcnow,
)
from mailer.readers.subscriptions import (
    end_address,
    subscriber_by_email,
)

log = logging.getLogger(__name__)

TagKind = Literal["d", "n"]
Severity = Literal["hard", "soft", "complaint"]

# -- VERP return paths -------------------------------------------------------------------

_VERP_RE = re.compile(
    r"^(?P<base>[^+@\s]+)\+(?P<kind>[dn])(?P<id>[0-9]{1,18})-(?P<mac>[0-9a-f]{8})@(?P<domain>[^@\s]+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class VerpTag:
    """Which message a return path belongs to: a digest delivery or a notice."""

    kind: TagKind
    id: int


class ForgedReturnPath(ValueError):
    """A return path shaped like ours whose MAC does not match."""


@dataclass(frozen=True)
class ReturnPaths:
    """Makes and checks per-message envelope senders.

    `bounce_address` (MAILER_BOUNCE_ADDRESS) names the mailbox bounces go to;
    empty means `bounces@` the From domain, which keeps SPF and DMARC aligned
    with From without any setting.
    """

    secret: str
    bounce_address: str = ""

    def _mac(self, kind: TagKind, ident: int) -> str:
        msg = f"verp:{kind}{ident}".encode()
        return hmac.new(self.secret.encode(), msg, hashlib.sha256).hexdigest()[:8]

    def address(self, kind: TagKind, ident: int, sender: str) -> str:
        if self.bounce_address:
            base, _, domain = parseaddr(self.bounce_address)[1].rpartition("@")
        else:
            base, domain = "bounces", sender_domain(sender)
        return f"{base}+{kind}{ident}-{self._mac(kind, ident)}@{domain}"

    def for_delivery(self, delivery_id: int, sender: str) -> str:
        """The envelope sender (MAIL FROM) for one digest delivery."""
        return self.address("d", delivery_id, sender)

    def for_notice(self, notification_id: int, sender: str) -> str:
        """The envelope sender (MAIL FROM) for one confirm or welcome mail."""
        return self.address("n", notification_id, sender)

    def parse(self, address: str) -> VerpTag | None:
        """The tag in an address; None if it is not shaped like ours; raises if forged."""
        match = _VERP_RE.match(address.strip().strip("<>").strip())
        if match is None:
            return None
        kind: TagKind = "d" if match["kind"].lower() == "d" else "n"
        ident = int(match["id"])
        if not hmac.compare_digest(match["mac"].lower(), self._mac(kind, ident)):
            raise ForgedReturnPath(f"the return path {address!r} does not carry our signature")
        return VerpTag(kind, ident)


def return_paths(settings: Settings) -> ReturnPaths:
    return ReturnPaths(settings.secret(), settings.bounce_address)


# -- reading reports ---------------------------------------------------------------------


class NotAReport(ValueError):
    """The message is not a failure report we can act on; the text says why."""


@dataclass(frozen=True)
class Report:
    """What a DSN or ARF report says, before we decide whether to believe it."""

    severity: Severity
    recipient: str | None
    status: str | None
    diagnostic: str | None
    # Addresses that may hold our VERP tag, most trustworthy first.
    return_paths: tuple[str, ...] = ()

    @property
    def kind(self) -> Literal["bounce", "complaint"]:
        return "complaint" if self.severity == "complaint" else "bounce"


_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE_RE = re.compile(r"\b([245]\d\d)\b")
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")


def _typed_value(value: str | None) -> str | None:
    """`rfc822; user@host` -> `user@host`; address-type prefixes are noise to us."""
    if not value:
        return None
    value = " ".join(str(value).split())
    if ";" in value:
        value = value.split(";", 1)[1].strip()
    return value or None


def _address_value(value: str | None) -> str | None:
    """`rfc822; <user@host>` -> `user@host`."""
    typed = _typed_value(value)
    return (parseaddr(typed)[1] or typed) if typed else None


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    text = payload if isinstance(payload, str) else ""
    if part.get("Content-Transfer-Encoding", "").lower() in ("base64", "quoted-printable"):
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else text
    chunks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    parser = HeaderParser(policy=policy.compat32)
    return [parser.parsestr(chunk + "\n") for chunk in chunks if chunk.strip()]


def _original_headers(report: Message) -> Message | None:
    """The returned message's headers, from message/rfc822 or text/rfc822-headers."""
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            return HeaderParser(policy=policy.compat32).parsestr(text)
    return None


def _addresses(values: Iterable[object]) -> list[str]:
    return [addr for _, addr in getaddresses([str(v) for v in values if v]) if addr]


def _envelope_candidates(msg: Message) -> list[str]:
    out: list[str] = []
    for name in _ENVELOPE_HEADERS:
        out += _addresses(msg.get_all(name) or [])
    return out


def parse_report(raw: bytes) -> Report:
    """Read a DSN or ARF report; raises NotAReport for anything else or anything broken."""
    if not raw or not raw.strip():
        raise NotAReport("the message is empty")
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
    except Exception as exc:  # the email package is lenient; this is belt and braces
        raise NotAReport(f"the message cannot be parsed: {exc}") from exc
    if msg.get_content_type() != "multipart/report":
        raise NotAReport(
            f"not a multipart/report (it is {msg.get_content_type()}); "
            "only RFC 3464 and RFC 5965 reports are read"
        )
    report_type = str(msg.get_param("report-type", "", header="content-type") or "").lower()
    if report_type == "delivery-status":
        return _parse_dsn(msg)
    if report_type == "feedback-report":
        return _parse_arf(msg)
    raise NotAReport(f"a multipart/report of type {report_type or 'none'!r}, not one we read")


def _find_part(msg: Message, ctype: str) -> Message:
    for part in msg.walk():
        if part.get_content_type() == ctype:
            return part
    raise NotAReport(f"the report has no {ctype} part")


def _parse_dsn(msg: Message) -> Report:
    blocks = _blocks(_find_part(msg, "message/delivery-status"))
    recipients = [b for b in blocks if b.get("Action") or b.get("Final-Recipient")]
    if not recipients:
        raise NotAReport("the delivery status has no per-recipient fields")
    found: list[Report] = []
    for block in recipients:
        action = str(block.get("Action", "")).strip().lower()
        diagnostic = _typed_value(block.get("Diagnostic-Code"))
        match = _STATUS_RE.search(str(block.get("Status", ""))) or _STATUS_RE.search(
            diagnostic or ""
        )
        if action in ("delivered", "relayed", "expanded"):
            continue
        if match:
            status = ".".join(match.groups())
        elif action == "failed":
            status = "5.0.0"
        elif action == "delayed":
            status = "4.0.0"
        else:
            continue
        if status.startswith("2"):
            continue
        recipient = _address_value(block.get("Original-Recipient")) or _address_value(
            block.get("Final-Recipient")
        )
        found.append(
            Report(
                severity="hard" if status.startswith("5") else "soft",
                recipient=recipient,
                status=status,
                diagnostic=diagnostic or (f"Action: {action}" if action else None),
            )
        )
    if not found:
        raise NotAReport("the delivery status reports no failure (delivered, relayed or unknown)")
    worst = min(found, key=lambda r: 0 if r.severity == "hard" else 1)
    original = _original_headers(msg)
    paths = _envelope_candidates(msg)
    if original is not None:
        paths += _addresses(original.get_all("Return-Path") or [])
    return Report(worst.severity, worst.recipient, worst.status, worst.diagnostic, tuple(paths))


def _parse_arf(msg: Message) -> Report:
    blocks = _blocks(_find_part(msg, "message/feedback-report"))
    if not blocks:
        raise NotAReport("the feedback report is empty")
    fields = blocks[0]
    feedback_type = str(fields.get("Feedback-Type", "")).strip().lower()
    if not feedback_type:
        raise NotAReport("the feedback report has no Feedback-Type")
    if feedback_type not in COMPLAINT_TYPES:
        raise NotAReport(f"a feedback report of type {feedback_type!r} is not a complaint")
    original = _original_headers(msg)
    paths = _addresses(fields.get_all("Original-Mail-From") or [])
    if original is not None:
        paths += _addresses(original.get_all("Return-Path") or [])
    paths += _envelope_candidates(msg)
    recipient = _address_value(fields.get("Original-Rcpt-To"))
    if recipient is None and original is not None:
        found = _addresses(original.get_all("To") or [])
        recipient = found[0] if found else None
    return Report(
        severity="complaint",
        recipient=recipient,
        status=None,
        diagnostic=f"Feedback-Type: {feedback_type}",
        return_paths=tuple(paths),
    )


# -- acting on them ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a report did; applied=False means nothing in the database changed."""

    result: str
    reason: str
    applied: bool = False
    delivery_id: int | None = None
    notification_id: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "result": self.result,
            "reason": self.reason,
            "applied": self.applied,
            "delivery_id": self.delivery_id,
            "notification_id": self.notification_id,
        }


def ignored(result: str, reason: str) -> Outcome:
    return Outcome(result=result, reason=reason, applied=False)


@dataclass(frozen=True)
class BounceEvent:
    """A report from an authenticated source (the webhook's JSON): no VERP needed."""

    type: Literal["bounce", "complaint"]
    email: str
    status: str | None = None
    diagnostic: str | None = None

    def severity(self) -> Severity:
        if self.type == "complaint":
            return "complaint"
        if self.status is None:
            return "hard"
        match = _STATUS_RE.fullmatch(self.status.strip())
        if match is None or match.group(1) == "2":
            raise ValueError(f"status must be a 4.x.x or 5.x.x code, got {self.status!r}")
        return "hard" if match.group(1) == "5" else "soft"


def _verified_tag(paths: Sequence[str], verp: ReturnPaths) -> VerpTag | Outcome:
    forged: str | None = None
    for address in paths:
        try:
            tag = verp.parse(address)
        except ForgedReturnPath as exc:
            forged = str(exc)
            continue
        if tag is not None:
            return tag
    if forged:
        return ignored("forged", forged)
    return ignored("no-return-path", "the report names no return path of ours; nothing changed")


def handle_raw(
    session: Session,
    verp: ReturnPaths,
    raw: bytes,
    *,
    soft_limit: int = 3,
    now: datetime | None = None,
) -> Outcome:
    """Read one report and act on it if it is genuine. Flushes; the caller commits."""
    try:
        report = parse_report(raw)
    except NotAReport as exc:
        return ignored("not-a-report", str(exc))
    tag = _verified_tag(report.return_paths, verp)
    if isinstance(tag, Outcome):
        return tag
    return apply_tagged(session, tag, report, soft_limit=soft_limit, now=now)


def apply_tagged(
    session: Session,
    tag: VerpTag,
    report: Report,
    *,
    soft_limit: int = 3,
    now: datetime | None = None,
) -> Outcome:
    """Apply a verified report to the message its return path names."""
    delivery: Delivery | None = None
    note: Notification | None = None
    if tag.kind == "d":
        delivery = session.get(Delivery, tag.id)
        if delivery is None:
            return ignored("unknown-delivery", f"no delivery {tag.id}; nothing changed")
        sub = session.get(Subscription, delivery.subscription_id)
    else:
        note = session.get(Notification, tag.id)
        if note is None:
            return ignored("unknown-notice", f"no notification {tag.id}; nothing changed")
        sub = session.get(Subscription, note.subscription_id)
    if sub is None:  # deleted since (erasure): nothing left to protect
        return ignored("unknown-subscription", "the subscription is gone; nothing changed")
    outcome = _apply(
        session,
        sub.subscriber,
        [sub],
        report.severity,
        report.status,
        report.diagnostic,
        soft_limit=soft_limit,
        now=now or utcnow(),
    )
    if outcome.result in ("hard-bounce", "soft-bounce-limit"):
        _mark_failed(delivery, note, report, now or utcnow())
    return Outcome(
        outcome.result,
        outcome.reason,
        outcome.applied,
        delivery_id=delivery.id if delivery else None,
        notification_id=note.id if note else None,
    )


def handle_event(
    session: Session, event: BounceEvent, *, soft_limit: int = 3, now: datetime | None = None
) -> Outcome:
    """Apply a report about an address from a trusted source. Flushes; the caller commits."""
    severity = event.severity()
    subscriber = subscriber_by_email(session, event.email)
    if subscriber is None or not subscriber.subscriptions:
        return ignored("unknown-address", "no subscriber has that address; nothing changed")
    return _apply(
        session,
        subscriber,
        list(subscriber.subscriptions),
        severity,
        event.status,
        event.diagnostic,
        soft_limit=soft_limit,
        now=now or utcnow(),
    )


def _detail(status: str | None, diagnostic: str | None) -> str:
    return " ".join(x for x in (status, diagnostic) if x)[:2000] or "no diagnostic"


def _apply(
    session: Session,
    subscriber: Subscriber,
    counted: list[Subscription],
    severity: Severity,
    status: str | None,
    diagnostic: str | None,
    *,
    soft_limit: int,
    now: datetime,
) -> Outcome:
    """Soft bounces count on the subscriptions the report is about (`counted`);
    suppression is per address, so ending one ends all of the address's
    subscriptions (`subscriptions.end_address`)."""
    detail = _detail(status, diagnostic)
    if severity == "soft":
        worst = 0
        for sub in counted:
            sub.soft_bounces = (sub.soft_bounces or 0) + 1
            worst = max(worst, sub.soft_bounces)
        if worst < soft_limit:
            session.flush()
            return Outcome("soft-bounce", f"soft bounce {worst} of {soft_limit}: {detail}", True)
        reason = f"soft-bounce-limit ({worst} in a row): {detail}"
        end_address(
            session,
            subscriber,
            Status.BOUNCED,
            reason="soft-bounce-limit",
            source="bounce",
            detail=reason,
            now=now,
        )
        return Outcome("soft-bounce-limit", reason, True)
    if severity == "hard":
        end_address(
            session,
            subscriber,
            Status.BOUNCED,
            reason="hard-bounce",
            source="bounce",
            detail=detail,
            now=now,
        )
        return Outcome("hard-bounce", f"address suppressed: {detail}", True)
    end_address(
        session,
        subscriber,
        Status.COMPLAINED,
        reason="complaint",
        source="complaint",
        detail=detail,
        now=now,
    )
    return Outcome("complaint", f"address suppressed: {detail}", True)


def _mark_failed(
    delivery: Delivery | None, note: Notification | None, report: Report, now: datetime
) -> None:
    text = _detail(report.status, report.diagnostic)
    if delivery is not None:
        code = _SMTP_CODE_RE.search(report.diagnostic or "")
        delivery.status = DeliveryStatus.FAILED
        delivery.smtp_code = int(code.group(1)) if code else None
        delivery.smtp_reply = text
        delivery.updated_at = now
    if note is not None:
        note.status = NoticeStatus.FAILED
        note.last_error = text


def reset_soft_bounces(session: Session, subscription_ids: Iterable[int]) -> None:
    """Call when the server accepted a message: soft bounces only count in a row.

    One UPDATE for a whole batch, touching only rows that have a count, so
    the common case writes nothing.
    """
    ids = list(subscription_ids)
    if ids:
        session.execute(
            update(Subscription)
            .where(among(Subscription.id, ids, is_postgres(session)), Subscription.soft_bounces > 0)
            .values(soft_bounces=0)
        )


# -- mailboxes -------------------------------------------------------------------------------

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
