"""SMTP connections from a URL, and one send that always ends in a reply.

`smtp://user:pass@host:port` upgrades with STARTTLS when the server offers
it; `smtps://` is TLS from the first byte. The password is sent only over
TLS, or to a relay on a loopback address (a local Postfix): to anything else
that offers no STARTTLS the login is refused before AUTH, with the reason,
and the mail waits for a retry. Every outcome of a send, success
or refusal, comes back as a `Reply` so callers record it instead of guessing;
only a lost connection raises, because then nothing is known about the rest
of the batch.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mailer.mail.messages import envelope_address
from mailer.outbound import is_loopback

# Replies that say the mailbox does not exist or never will: a verdict on the address.
HARD_BOUNCE = frozenset({550, 551, 553})


@dataclass(frozen=True)
class Reply:
    """The verdict on one message. `local` marks one we reached ourselves without asking
    the server (our relay lacks a capability the message needs): it says nothing about
    the address, so it must never count as a bounce."""

    code: int
    text: str
    local: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def condemns_address(self) -> bool:
        """The one test, for digests and notices alike, of a reply that ends the
        address as a bounce report would; never one our relay made up."""
        return self.code in HARD_BOUNCE and not self.local


class ConnectionLost(RuntimeError):
    """The SMTP conversation broke; what was in flight is unknown."""


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def connect(url: str, timeout: float = 30.0) -> smtplib.SMTP:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        if parts.scheme == "smtps":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                host, parts.port or 465, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = smtplib.SMTP(host, parts.port or 25, timeout=timeout)
            conn.ehlo()
            if conn.has_extn("starttls"):
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
        if parts.username:
            _refuse_cleartext_login(conn, host)
            conn.login(unquote(parts.username), unquote(parts.password or ""))
    except (OSError, smtplib.SMTPException) as exc:
        raise ConnectionLost(f"cannot connect to SMTP server {host}: {exc}") from exc
    return conn


def cleartext_login_refusal(sock: socket.socket | None, host: str) -> str | None:
    """Why a password may not go over `sock`, or None: it may over TLS, or in the clear
    to a loopback address (the address actually connected to, not the URL's name)."""
    if sock is None:
        return f"not connected to {host}"
    if isinstance(sock, ssl.SSLSocket):
        return None
    peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
    if is_loopback(peer):
        return None
    return f"refusing to send the password to {host} ({peer}) in the clear"


def _refuse_cleartext_login(conn: smtplib.SMTP, host: str) -> None:
    why = cleartext_login_refusal(conn.sock, host)
    if why is None:
        return
    conn.close()
    raise smtplib.SMTPException(
        f"{why.replace('the password', 'the SMTP password')}: it offers no STARTTLS; use a "
        "relay that does, or smtps:// for TLS from the first byte (only a relay on a "
        "loopback address gets a login without TLS)"
    )


_LINE_DOT = re.compile(rb"\n\.")


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: every line starting with "." gets another, then CRLF "." CRLF.

    Byte for byte what smtplib's `data()` sends, without its `(?m)^\\.` regex
    over the whole 10-20 KB message: a line starts after every LF (CRLF or a
    bare LF, as the regex's `^` does) and at the very beginning. The LF-dot
    pairs are found by a regex whose pattern is a literal, which `re` searches
    for directly: 7 µs for a 13 KB digest with nine of them, where `in` and
    `bytes.replace` (two scans and a count) took 19.
    """
    data = _LINE_DOT.sub(b"\n..", data)
    if data[:1] == b".":
        data = b"." + data
    if data[-2:] != b"\r\n":
        data += b"\r\n"
    return data + b".\r\n"


def _refused(conn: smtplib.SMTP, code: int, text: bytes) -> Reply:
    """A refusal mid-transaction: 421 means the server is closing, so do we;
    anything else resets the transaction so the connection can go on."""
    if code == 421:
        conn.close()
    else:
        # A disconnect here is noticed by the next command, as smtplib does.
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            conn.rset()
    return Reply(code, _decode(text))


def send(conn: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> Reply:
    """Send one message to one recipient and return the server's verdict."""
    reply = send_when(conn, sender, recipient, data)
    if reply is None:  # pragma: no cover - only a `ready` that says no withdraws one
        raise RuntimeError("message withdrawn without a ready check")
    return reply


def send_when(
    conn: smtplib.SMTP,
    sender: str,
    recipient: str,
    data: bytes,
    *,
    sent_mail: Callable[[], None] | None = None,
    ready: Callable[[], bool] | None = None,
    meanwhile: Callable[[], None] | None = None,
    pipelining: bool = True,
) -> Reply | None:
    """`send`, with hooks that let the caller work while the server does.

    `sent_mail` runs once MAIL FROM is on its way, before its reply is read:
    the sender sends its database write there, so the server takes in the
    command while the write goes out. `ready` is asked once the envelope is
    accepted, before DATA: the sender waits there for that write (its
    in-flight marker) to commit. If it answers False the transaction is reset
    and None returned: nothing was sent. `meanwhile` runs after the last
    byte of the message has gone and before the server's verdict is read: the
    sender builds the next message there, while the server takes this one in.

    The conversation is driven command by command instead of through
    `sendmail`: that one parses both addresses with `email.utils.parseaddr`
    and runs a regex over the whole message every time, which was a third of
    a worker's CPU per message. Our addresses are envelope-ready already and
    `dot_stuff` does the period quoting with one `bytes.replace`. The
    outcomes are sendmail's: the same commands, options (SIZE, SMTPUTF8) and
    resets, a `Reply` for every answer the server gives, `ConnectionLost`
    only when the conversation itself broke.

    Where the server offers PIPELINING (RFC 2920) and `pipelining` is left
    on, MAIL, RCPT and DATA go out in one write and their replies are read
    together: two round trips a message instead of four (`_pipelined`).
    """
    env_from = envelope_address(sender)
    env_to = envelope_address(recipient)
    try:
        conn.ehlo_or_helo_if_needed()
        options = ""
        if conn.does_esmtp:
            if conn.has_extn("size"):
                options = f" SIZE={len(data)}"
            if env_from.smtputf8 or env_to.smtputf8:
                if not conn.has_extn("smtputf8"):
                    return NO_SMTPUTF8
                conn.command_encoding = "utf-8"
                options += " SMTPUTF8"
        elif env_from.smtputf8 or env_to.smtputf8:
            return NO_SMTPUTF8
        # Refused with ValueError, before anything is sent, if they would carry CR or LF.
        mail = _command("mail", f"FROM:<{env_from.address}>{options}")
        rcpt = _command("rcpt", f"TO:<{env_to.address}>")
        if pipelining and conn.has_extn("pipelining"):
            return _pipelined(conn, mail + rcpt + DATA, data, sent_mail, ready, meanwhile)
        conn.send(mail)
        if sent_mail is not None:
            sent_mail()
        code, text = conn.getreply()
        if code != 250:
            return _refused(conn, code, text)
        conn.send(rcpt)
        code, text = conn.getreply()
        if code not in (250, 251):
            return _refused(conn, code, text)
        if ready is not None and not ready():
            with contextlib.suppress(smtplib.SMTPServerDisconnected):
                conn.rset()
            return None
        conn.send(DATA)
        code, text = conn.getreply()
        if code != 354:
            return _refused(conn, code, text)
        return _content(conn, data, meanwhile)
    except smtplib.SMTPResponseException as exc:
        # "Line too long" from getreply, or a HELO refused: still the server's answer.
        if exc.smtp_code == 421:
            raise ConnectionLost(f"421 {_decode(exc.smtp_error)}") from exc
        return Reply(exc.smtp_code, _decode(exc.smtp_error))
    except (OSError, smtplib.SMTPServerDisconnected) as exc:
        raise ConnectionLost(str(exc) or type(exc).__name__) from exc


# A non-ASCII local part needs SMTPUTF8 at our relay: without it the message can't be
# handed over at all. Our relay's limit, not the address's fault (no bounce, no suppression).
NO_SMTPUTF8 = Reply(
    553, "not sent: our relay does not offer SMTPUTF8, which this address needs", local=True
)


def _command(name: str, args: str) -> str:
    """One command line, refused with ValueError if it would carry CR or LF (as putcmd)."""
    line = f"{name} {args}"
    if "\r" in line or "\n" in line:
        shown = line.replace("\n", "\\n").replace("\r", "\\r")
        raise ValueError(f"command and arguments contain prohibited newline characters: {shown}")
    return line + "\r\n"


DATA = "data\r\n"


def _content(conn: smtplib.SMTP, data: bytes, meanwhile: Callable[[], None] | None) -> Reply:
    """The message itself, once the server said 354, and its verdict."""
    conn.send(dot_stuff(data))
    if meanwhile is not None:
        meanwhile()
    code, text = conn.getreply()
    if code != 250:
        return _refused(conn, code, text)
    return Reply(250, _decode(text))


def _pipelined(
    conn: smtplib.SMTP,
    commands: str,
    data: bytes,
    sent_mail: Callable[[], None] | None,
    ready: Callable[[], bool] | None,
    meanwhile: Callable[[], None] | None,
) -> Reply | None:
    """MAIL, RCPT and DATA in one write (DATA last, as RFC 2920 asks), then the three
    replies in order, then the message only if all three said yes.

    Every reply is read even after a refusal, so the next message's replies
    are never taken for this one's. The server answers DATA with 354 only when
    it has a recipient; a message we then withdraw (`ready` said no: the row is
    not ours) cannot be taken back by RSET while the server waits for it, so
    the connection is closed instead: a server delivers nothing it did not
    receive to the final ".". The caller sees the closed connection
    (`conn.sock is None`) and opens another. For the same reason a hook that
    raises (the database write failed) hangs up before the error goes on: a
    QUIT would be read as part of the message.
    """
    conn.send(commands)
    try:
        return _pipelined_replies(conn, data, sent_mail, ready, meanwhile)
    except BaseException:
        conn.close()
        raise


def _pipelined_replies(
    conn: smtplib.SMTP,
    data: bytes,
    sent_mail: Callable[[], None] | None,
    ready: Callable[[], bool] | None,
    meanwhile: Callable[[], None] | None,
) -> Reply | None:
    if sent_mail is not None:
        sent_mail()
    refusal: tuple[int, bytes] | None = None
    for wanted in ((250,), (250, 251), (354,)):  # MAIL, RCPT, DATA
        code, text = conn.getreply()
        if code == 421:  # the server is closing: whatever else it said is moot
            return _refused(conn, code, text)
        if code not in wanted and refusal is None:
            refusal = (code, text)  # the first one says why: after it come 503s
    waiting = code == 354  # DATA's reply, read last
    if refusal is None and (ready is None or ready()):
        return _content(conn, data, meanwhile)
    if waiting:
        conn.close()  # only hanging up withdraws a message the server is waiting for
        return Reply(refusal[0], _decode(refusal[1])) if refusal else None
    assert refusal is not None  # no 354 means something was refused
    return _refused(conn, *refusal)


def close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()


class Connections:
    """Where a sender gets its SMTP connection and gives it back when done.

    By default a fresh connection per batch, closed at the end. With `keep`,
    one idle connection stays open for the next batch in this process (a
    worker sends batch after batch to the same relay): opening one per batch
    of a few hundred messages cost a TCP handshake, the greeting, EHLO (and
    STARTTLS and AUTH on a real relay) and QUIT each time, at both ends. A kept
    connection is checked with NOOP before it is used again, and given up
    after `max_idle` seconds, so a server that dropped it in the meantime costs
    one round trip, never a message.
    """

    def __init__(
        self, opener: Callable[[], smtplib.SMTP], *, keep: bool = False, max_idle: float = 60.0
    ) -> None:
        self.opener = opener
        self.keep = keep
        self.max_idle = max_idle
        self._idle: tuple[smtplib.SMTP, float] | None = None
        self._lock = threading.Lock()

    def take(self) -> smtplib.SMTP:
        """A working connection: the kept one if it still answers, else a new one."""
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is not None:
            conn, since = idle
            if time.monotonic() - since < self.max_idle and _answers(conn):
                return conn
            close(conn)
        return self.opener()

    def give_back(self, conn: smtplib.SMTP) -> None:
        """Keep a connection that ended its batch cleanly (or close it when not keeping)."""
        if self.keep and conn.sock is not None:
            with self._lock:
                spare, self._idle = self._idle, (conn, time.monotonic())
            if spare is not None:  # another batch of this process kept one first
                close(spare[0])
        else:
            close(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is not None:
            close(idle[0])


def _answers(conn: smtplib.SMTP) -> bool:
    try:
        return conn.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


_kept: dict[tuple[str, float], Connections] = {}
_kept_lock = threading.Lock()


def kept(url: str, timeout: float = 30.0) -> Connections:
    """This process's kept connection to `url`. Only the latest URL keeps one open:
    settings that changed (a test, a reconfigured relay) leave nothing behind."""
    key = (url, timeout)
    with _kept_lock:
        found = _kept.get(key)
        if found is None:
            for other in _kept.values():
                other.close()
            _kept.clear()
            found = _kept[key] = Connections(lambda: connect(url, timeout), keep=True)
        return found
