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
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache
from typing import Any

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


@lru_cache(maxsize=256)
def sender_domain(sender: str) -> str:
    """The From address's domain. Cached: it is asked once per message (Message-ID,
    VERP return path) for the same few senders, and `parseaddr` is ~50 µs."""
    return parseaddr(sender)[1].rpartition("@")[2] or "localhost"


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def _qp(text: str) -> bytes:
    data = _crlf(text).encode("utf-8")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)


_PLACEHOLDERS = re.compile(
    "|".join(
        re.escape(p)
        for p in (
            Placeholder.EMAIL,
            Placeholder.UNSUBSCRIBE_URL,
            Placeholder.PREFERENCES_URL,
            Placeholder.VIEW_URL,
        )
    )
)
SOFT_BREAK = b"=\r\n"


def _qp_bytes(data: bytes) -> bytes:
    """Quoted-printable with CRLF soft breaks even for a piece with no line end.

    binascii picks its line ending from the data; a piece without one would
    get bare LF soft breaks, so it is encoded with a CRLF added, then cut off.
    """
    if data.endswith(b"\r\n"):
        return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return binascii.b2a_qp(data + b"\r\n", quotetabs=False, istext=True, header=False)[:-2]


@dataclass(frozen=True)
class _Piece:
    """Encoded bytes (first line encoded as if at column 0) and their line lengths."""

    data: bytes
    first: int
    last: int
    multiline: bool
    ws: bytes = b""  # trailing blanks kept raw: they may end up mid-line

    @classmethod
    def of(cls, data: bytes, ws: bytes = b"") -> _Piece:
        head, crlf, _ = data.partition(b"\r\n")
        tail = data.rsplit(b"\r\n", 1)[-1]
        return cls(data, len(head), len(tail), bool(crlf), ws)


@dataclass(frozen=True)
class _Body:
    """A body split at its placeholders, the literal pieces encoded once.

    Quoted-printable encoding a 20 KB body per reader was most of the
    per-reader cost (~180 of 230 µs); now only the reader's own values are
    encoded, and pieces are joined inline when the line has room, with a
    soft line break ("=" at the end of a line, gone when decoded) when not.
    """

    pieces: tuple[_Piece, ...]
    keys: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> _Body:
        text = _crlf(text)
        if not text.endswith("\r\n"):
            text += "\r\n"
        pieces: list[_Piece] = []
        keys: list[str] = []
        at = 0
        for match in _PLACEHOLDERS.finditer(text):
            raw = text[at : match.start()].encode("utf-8")
            kept = raw.rstrip(b" \t")
            pieces.append(_Piece.of(_qp_bytes(kept) if kept else b"", raw[len(kept) :]))
            keys.append(match.group())
            at = match.end()
        pieces.append(_Piece.of(_qp_bytes(text[at:].encode("utf-8"))))
        return cls(tuple(pieces), tuple(keys))

    def encode(self, values: Mapping[str, str], escape: bool) -> list[bytes]:
        """The encoded body as the parts it joins to; the literal pieces are the
        template's own bytes objects, the same for every reader (the DKIM signer
        remembers their canonical form, `dkim_signing._Cores`)."""
        out: list[bytes] = []
        col = 0
        ws = b""

        def emit(piece: _Piece) -> None:
            nonlocal col, ws
            if not piece.data:
                ws += piece.ws
                return
            if ws:
                # Raw blanks only mid-line: before a line end they must be encoded.
                if piece.first and col + len(ws) + piece.first <= 75:
                    out.append(ws)
                    col += len(ws)
                else:
                    blanks = ws.replace(b" ", b"=20").replace(b"\t", b"=09")
                    if col + len(blanks) > 75:
                        out.append(SOFT_BREAK)
                    out.append(blanks + SOFT_BREAK)
                    col = 0
                ws = b""
            elif col and col + piece.first > 75:
                out.append(SOFT_BREAK)
                col = 0
            out.append(piece.data)
            col = piece.last if piece.multiline else col + piece.first
            ws = piece.ws

        emit(self.pieces[0])
        for key, piece in zip(self.keys, self.pieces[1:], strict=True):
            value = values.get(key, key)
            if escape:
                value = html.escape(value)
            if value:
                emit(_Piece.of(_qp_bytes(value.encode("utf-8"))))
            emit(piece)
        if ws:  # only blanks left at the very end: encoded, as at any line end
            out.append(ws.replace(b" ", b"=20").replace(b"\t", b"=09"))
        return out


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
    _text: _Body = field(init=False, repr=False)
    _html: _Body = field(init=False, repr=False)

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
        self._text = _Body.of(self.text)
        self._html = _Body.of(self.html)

    def build(self, to: str, **options: Any) -> tuple[bytes, str]:
        """The wire bytes for one reader, and the Message-ID they carry (the options
        are `build_parts`')."""
        parts, message_id = self.build_parts(to, **options)
        return b"".join(parts), message_id

    def build_parts(
        self,
        to: str,
        *,
        unsubscribe_url: str | None = None,
        values: Mapping[str, str] | None = None,
        message_id: str | None = None,
        date: datetime | None = None,
    ) -> tuple[list[bytes], str]:
        """The wire bytes for one reader as the parts they join from (what the DKIM
        signer takes, `dkim_signing._Cores`), and the Message-ID they carry."""
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
        values = values or {}
        lines += [
            f"--{b}\r\n".encode(),
            b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            *self._text.encode(values, escape=False),
            f"--{b}\r\n".encode(),
            b'Content-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            *self._html.encode(values, escape=True),
            f"--{b}--\r\n".encode(),
        ]
        return lines, message_id
