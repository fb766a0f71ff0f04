"""MIME bytes: build the message once, personalise it per reader with string work.

Building an EmailMessage per reader costs milliseconds (DESIGN.md), so a
`MessageTemplate` lays out the headers and both parts once, with
placeholders where the reader's address and links go. Per reader we replace
the placeholders, quoted-printable-encode the two bodies (binascii, in C) and
join bytes. Lines stay within 998 octets and end in CRLF, as SMTP wants.

The placeholders are the template's own slots and nothing else: each
rendering draws a secret nonce (`Slots`), so text from outside (an article's
URL, title, image, a topic name) can never spell one, whatever it contains,
and a reader's address or links never land anywhere but where the template
put a slot.

Addresses in headers are ASCII wherever they can be: an internationalised
domain goes out as punycode (From, To, Message-ID, List-Id), never as an
RFC 2047 word inside an address, which no reader may decode.
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.header import Header
from email.utils import format_datetime, make_msgid, parseaddr
from functools import cached_property, lru_cache
from html import escape as escape_html
from typing import Any
from urllib.parse import quote

import idna

from mailer.models import utcnow


class Slot:
    """The reader's values a template has places for: the keys of `values`."""

    EMAIL = "email"
    UNSUBSCRIBE_URL = "unsubscribe_url"
    PREFERENCES_URL = "preferences_url"
    ALL = (EMAIL, UNSUBSCRIBE_URL, PREFERENCES_URL)


@dataclass(frozen=True)
class Slots:
    """The markers of one rendering, where the reader's values go.

    A marker is `__MAILER_EMAIL_<nonce>__`: letters, digits and underscores,
    which survive Jinja escaping, premailer and URL parsing untouched. The
    nonce is 128 random bits drawn when the body is rendered, after every
    article in it was written, and kept with what was rendered
    (`DigestVariant.slots`) so the sender finds the same markers; outside
    text cannot guess it, so a marker found in a body is one the template
    put there. The empty nonce names the fixed markers of editions rendered
    before there were nonces (`__MAILER_EMAIL__`).
    """

    nonce: str

    @classmethod
    def fresh(cls) -> Slots:
        return cls(secrets.token_hex(16))

    @classmethod
    def stored(cls, nonce: str | None) -> Slots:
        return cls(nonce or "")

    def marker(self, slot: str) -> str:
        suffix = f"_{self.nonce}" if self.nonce else ""
        return f"__MAILER_{slot.upper()}{suffix}__"

    @cached_property
    def _slot_of(self) -> dict[str, str]:
        return {self.marker(slot): slot for slot in Slot.ALL}

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(re.escape(m) for m in self._slot_of))

    def slot_of(self, marker: str) -> str:
        return self._slot_of[marker]

    def fill(self, text: str, values: Mapping[str, str], *, html: bool) -> str:
        """The text with each of this rendering's markers replaced by its slot's value
        (HTML-escaped for HTML); a slot without a value is left empty."""

        def value(match: re.Match[str]) -> str:
            found = values.get(self._slot_of[match.group()], "")
            return escape_html(found) if html else found

        return self.pattern.sub(value, text)


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


class UnencodableAddress(ValueError):
    """An address or domain that cannot be written the way mail needs it."""


def ascii_domain(domain: str) -> str:
    """A domain as headers and the envelope carry it: punycode (IDNA) when it is
    internationalised. The one rule for every place a domain goes out."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise UnencodableAddress(f"the domain {domain!r} has no ASCII (IDNA) form: {exc}") from exc


@dataclass(frozen=True)
class Envelope:
    """The address as the SMTP envelope and the headers need it, and whether that
    needs SMTPUTF8 (only a non-ASCII local part does: a domain has its punycode)."""

    address: str
    smtputf8: bool


def envelope_address(email: str) -> Envelope:
    local, _, domain = email.rpartition("@")
    if local.isascii() and domain.isascii():
        return Envelope(email, False)
    if local.isascii():
        return Envelope(f"{local}@{ascii_domain(domain)}", False)
    return Envelope(email, True)


_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def phrase(name: str) -> str:
    """A display name as an RFC 5322 phrase, all ASCII: atoms as they are, a quoted
    string when it holds specials (a comma, quotes, angle brackets), RFC 2047
    words when it is not ASCII (never inside quotes, where no reader decodes them)."""
    name = " ".join(name.split())
    if not name.isascii():
        # One line of encoded words, each within RFC 2047's 75 characters.
        return " ".join(Header(name, "utf-8", maxlinelen=76).encode().split())
    if _SPECIALS.search(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def mailto_address(address: str) -> str:
    """An address for a `mailto:` link in a header: punycode domain, and a non-ASCII
    local part percent-encoded (RFC 6068)."""
    local, _, domain = address.rpartition("@")
    return f"{quote(local, safe=LOCAL_SAFE)}@{ascii_domain(domain)}"


LOCAL_SAFE = "!#$&'*+-/=?^_`{|}~."


def list_id_value(name: str, list_id: str) -> str:
    """`List-Id` (RFC 2919): the name as a proper phrase, then `<list-id>` in ASCII."""
    shown = phrase(name)
    return f"{shown} <{list_id}>" if shown else f"<{list_id}>"


@lru_cache(maxsize=256)
def sender_domain(sender: str) -> str:
    """The From address's domain in ASCII (punycode), for Message-IDs and VERP. Cached:
    it is asked once per message for the same few senders, and `parseaddr` is ~50 µs."""
    return ascii_domain(parseaddr(sender)[1].rpartition("@")[2] or "localhost")


def from_header(sender: str) -> bytes:
    """The From line: the display name as a phrase and the address with its domain in
    punycode; only an address with a non-ASCII local part needs (and gets) UTF-8."""
    name, address = parseaddr(_clean(sender, "From"))
    envelope = envelope_address(address)
    if envelope.smtputf8:
        return _fold("From", sender, utf8=True)
    shown = phrase(name)
    return _fold("From", f"{shown} <{envelope.address}>" if shown else envelope.address)


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


@lru_cache(maxsize=4)
def _date_line(second: datetime) -> bytes:
    """The Date line, made once a second: every message of that second has the same
    one (the header carries no fraction), and formatting it was 4 µs a message."""
    return _fold("Date", format_datetime(second))


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
    def of(cls, text: str, slots: Slots | None) -> _Body:
        """Split at this rendering's markers only: anything else is literal text."""
        text = _crlf(text)
        if not text.endswith("\r\n"):
            text += "\r\n"
        pieces: list[_Piece] = []
        keys: list[str] = []
        at = 0
        found = [] if slots is None else list(slots.pattern.finditer(text))
        for match in found:
            raw = text[at : match.start()].encode("utf-8")
            kept = raw.rstrip(b" \t")
            pieces.append(_Piece.of(_qp_bytes(kept) if kept else b"", raw[len(kept) :]))
            keys.append(slots.slot_of(match.group()) if slots else "")
            at = match.end()
        pieces.append(_Piece.of(_qp_bytes(text[at:].encode("utf-8"))))
        return cls(tuple(pieces), tuple(keys))

    def encode(self, values: Mapping[str, str], escape: bool) -> list[bytes]:
        """The encoded body as the parts it joins to; the literal pieces are the
        template's own bytes objects, the same for every reader (the DKIM signer
        remembers their canonical form, `mail.dkim._Cores`)."""
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
            value = values.get(key, "")
            if escape:
                value = escape_html(value)
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
    # The rendering's markers; None for a body with nothing left to fill in per reader.
    slots: Slots | None = None
    _head: bytes = field(init=False, repr=False)
    _boundary: str = field(init=False, repr=False)
    _mailto: str = field(init=False, repr=False)
    _text: _Body = field(init=False, repr=False)
    _html: _Body = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._boundary = "=_mailer_" + secrets.token_hex(12)
        self.domain = sender_domain(self.sender)
        head = [
            from_header(self.sender),
            _fold("Subject", self.subject),
            b"MIME-Version: 1.0\r\n",
            b"Auto-Submitted: auto-generated\r\n",
        ]
        if self.list_id:
            head.append(_fold("List-Id", self.list_id))
        for name, value in self.extra_headers.items():
            head.append(_fold(_clean(name, "header name"), value))
        self._head = b"".join(head)
        self._mailto = (
            f"<mailto:{mailto_address(self.list_unsubscribe_mailto)}?subject=unsubscribe>"
            if self.list_unsubscribe_mailto
            else ""
        )
        self._text = _Body.of(self.text, self.slots)
        self._html = _Body.of(self.html, self.slots)

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
        signer takes, `mail.dkim._Cores`), and the Message-ID they carry."""
        message_id = message_id or make_msgid(domain=self.domain)
        envelope = envelope_address(to)
        lines = [
            self._head,
            # An ASCII local part at an IDN domain is all ASCII here (punycode).
            _fold("To", envelope.address, utf8=envelope.smtputf8),
            _date_line((date or utcnow()).replace(microsecond=0)),
            _fold("Message-ID", message_id),
        ]
        if unsubscribe_url:
            targets = [f"<{unsubscribe_url}>"]
            if self._mailto:
                targets.append(self._mailto)
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
