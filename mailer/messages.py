"""MIME bytes: build the message once, personalise it per reader with string work.

Building an EmailMessage per reader costs milliseconds (DESIGN.md), so a
`MessageTemplate` lays out the headers and both parts once, with
placeholders where the reader's address and links go. Per reader we replace
the placeholders, quoted-printable-encode the two bodies (binascii, in C) and
join bytes. Lines stay within 998 octets and end in CRLF, as SMTP wants.
"""

from __future__ import annotations

import binascii
import html
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.utils import format_datetime, make_msgid, parseaddr

import idna

from mailer.models import utcnow


class Placeholder:
    """Markers that survive Jinja escaping, premailer and URL parsing untouched."""

    EMAIL = "__MAILER_EMAIL__"
    UNSUBSCRIBE_URL = "__MAILER_UNSUBSCRIBE_URL__"
    PREFERENCES_URL = "__MAILER_PREFERENCES_URL__"
    VIEW_URL = "__MAILER_VIEW_URL__"


class HeaderInjection(ValueError):
    """A header value carried a line break or NUL."""


def _clean(value: str, name: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise HeaderInjection(f"{name} must not contain line breaks")
    return value


def _fold(name: str, value: str, utf8: bool = False) -> bytes:
    """One header line: plain ASCII takes a fast path; the rest is RFC 2047-encoded."""
    _clean(value, name)
    if value.isascii() and len(name) + len(value) < 990:
        return f"{name}: {value}\r\n".encode("ascii")
    pol = policy.SMTPUTF8 if utf8 else policy.SMTP
    return pol.fold_binary(name, pol.header_factory(name, value))


@dataclass(frozen=True)
class Envelope:
    """The address as the SMTP envelope needs it, and whether that needs SMTPUTF8."""

    address: str
    smtputf8: bool


def envelope_address(email: str) -> Envelope:
    local, _, domain = email.rpartition("@")
    if local.isascii() and domain.isascii():
        return Envelope(email, False)
    if local.isascii():
        return Envelope(f"{local}@{idna.encode(domain, uts46=True).decode()}", False)
    return Envelope(email, True)


def sender_domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "localhost"


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def _qp(text: str) -> bytes:
    data = _crlf(text).encode("utf-8")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)


@dataclass
class MessageTemplate:
    """A message with everything but the reader filled in."""

    sender: str
    subject: str
    html: str
    text: str
    list_id: str | None = None
    list_unsubscribe_mailto: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    _head: bytes = field(init=False, repr=False)
    _boundary: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._boundary = "=_mailer_" + secrets.token_hex(12)
        self.domain = sender_domain(self.sender)
        head = [
            _fold("From", self.sender),
            _fold("Subject", self.subject),
            b"MIME-Version: 1.0\r\n",
            b"Auto-Submitted: auto-generated\r\n",
        ]
        if self.list_id:
            head.append(_fold("List-Id", self.list_id))
        for name, value in self.extra_headers.items():
            head.append(_fold(_clean(name, "header name"), value))
        self._head = b"".join(head)

    def build(
        self,
        to: str,
        *,
        unsubscribe_url: str | None = None,
        values: Mapping[str, str] | None = None,
        message_id: str | None = None,
        date: datetime | None = None,
    ) -> tuple[bytes, str]:
        """The wire bytes for one reader, and the Message-ID they carry."""
        message_id = message_id or make_msgid(domain=self.domain)
        envelope = envelope_address(to)
        lines = [
            self._head,
            _fold("To", to, utf8=envelope.smtputf8),
            _fold("Date", format_datetime(date or utcnow())),
            _fold("Message-ID", message_id),
        ]
        if unsubscribe_url:
            targets = [f"<{unsubscribe_url}>"]
            if self.list_unsubscribe_mailto:
                targets.append(f"<mailto:{self.list_unsubscribe_mailto}?subject=unsubscribe>")
            lines.append(_fold("List-Unsubscribe", ", ".join(targets)))
            lines.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        b = self._boundary
        lines.append(f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n'.encode())
        text, page = self.text, self.html
        for key, value in (values or {}).items():
            text = text.replace(key, value)
            page = page.replace(key, html.escape(value))
        lines += [
            f"--{b}\r\n".encode(),
            b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(text),
            f"--{b}\r\n".encode(),
            b'Content-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(page),
            f"--{b}--\r\n".encode(),
        ]
        return b"".join(lines), message_id
