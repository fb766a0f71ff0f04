"""A real SMTP server for tests (aiosmtpd on a free port) that records what it got.

Its replies can be scripted per recipient or per message, so tests can make it
defer (4xx), refuse (5xx), drop the connection or answer slowly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailer.mail.sink import Pipelining, free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any = None  # the client's (host, port): one per connection
    tls: bool = False  # the conversation was encrypted (STARTTLS or implicit TLS)
    login: str | None = None  # whom the client authenticated as, if it did

    @property
    def message(self) -> EmailMessage:
        msg: Any = message_from_bytes(self.data, policy=policy.default)
        return msg


@dataclass
class Script:
    """Optional hooks; each returns an SMTP reply string to refuse, or None to accept."""

    on_mail: Callable[[str], str | None] | None = None
    on_rcpt: Callable[[str], str | None] | None = None
    on_data: Callable[[Envelope], str | None] | None = None
    delay: float = 0.0


class RecordingHandler(Pipelining):
    """Records each message; says PIPELINING only when asked (`pipelining`), so a test
    picks the client's pipelined or step-by-step conversation."""

    def __init__(self, pipelining: bool = False) -> None:
        self.received: list[Received] = []
        self.script = Script()
        self.lock = threading.Lock()
        self.pipelining = pipelining
        self.data_before_rcpt_reply = 0  # DATA already waiting when RCPT is answered

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.script.on_mail is not None:
            reply = self.script.on_mail(address)
            if reply is not None:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # Proof that the client pipelined: its DATA arrived before we answered RCPT.
        waiting = bytes(getattr(server._reader, "_buffer", b""))
        if waiting.upper().startswith(b"DATA"):
            self.data_before_rcpt_reply += 1
        if self.script.on_rcpt is not None:
            reply = self.script.on_rcpt(address)
            if reply is not None:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        if self.script.on_data is not None:
            reply = self.script.on_data(envelope)
            if reply is not None:
                return reply
        with self.lock:
            self.received.append(
                Received(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                    session.peer,
                    # STARTTLS fills session.ssl; implicit TLS only shows on the transport.
                    session.ssl is not None
                    or (
                        server.transport is not None
                        and server.transport.get_extra_info("ssl_object") is not None
                    ),
                    session.auth_data if session.authenticated else None,
                )
            )
        return "250 2.0.0 OK queued"


@dataclass
class SMTPServer:
    host: str
    port: int
    handler: RecordingHandler
    controller: Controller = field(repr=False)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]

    def stop(self) -> None:
        """Stop listening; safe to call again (tests stop it early to simulate an outage)."""
        if self.controller._thread is not None:
            self.controller.stop()


def password_check(user: str, password: str) -> Callable[..., AuthResult]:
    """An aiosmtpd authenticator taking this one login; it records `user` as the login.

    handled=False on a refusal: aiosmtpd then answers 535 itself (handled=True
    would leave the client waiting for an answer that never comes)."""

    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(),
            auth_data.password.decode(),
        ) == (user, password)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    return check


def start_smtp_server(
    pipelining: bool = False, host: str = "127.0.0.1", **options: Any
) -> SMTPServer:
    """`options` go to aiosmtpd's Controller: tls_context and require_starttls for
    STARTTLS, ssl_context for implicit TLS, authenticator for AUTH, and so on."""
    handler = RecordingHandler(pipelining)
    port = free_port()
    options.setdefault("enable_SMTPUTF8", True)  # a relay without it: enable_SMTPUTF8=False
    controller = Controller(handler, hostname=host, port=port, **options)
    controller.start()
    return SMTPServer(host, port, handler, controller)
