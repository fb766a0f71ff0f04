"""Reading bounce and complaint reports: what a DSN or an ARF report says, nothing more.

Reports come as RFC 3464 delivery status notifications (multipart/report;
report-type=delivery-status) and RFC 5965 ARF complaints (report-type=
feedback-report). Parsing changes nothing: `NotAReport` for anything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Literal

Severity = Literal["hard", "soft", "complaint"]


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


STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
SMTP_CODE_RE = re.compile(r"\b([245]\d\d)\b")
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
        match = STATUS_RE.search(str(block.get("Status", ""))) or STATUS_RE.search(diagnostic or "")
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
