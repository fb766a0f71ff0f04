"""The built-in SMTP sink: a real SMTP server that keeps every mail in a Maildir.

It makes the embedded default whole (mail really crosses SMTP) and lets the
web app show the outbox. It is for one machine, listening on loopback only.
"""

from __future__ import annotations

import mailbox
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port(host: str = "127.0.0.1") -> int:
    """aiosmtpd's Controller(port=0) does not work; ask the OS for a free port first."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts connections there yet: how a starter waits for a child."""
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


class Pipelining:
    """Says PIPELINING (RFC 2920) in the EHLO reply.

    aiosmtpd answers pipelined commands correctly (it reads them in order from
    its stream and answers each) but does not advertise the extension; real
    relays (Postfix, Exim, the big sending services) do, and our client then
    sends MAIL, RCPT and DATA in one write. `pipelining` False leaves it out.
    """

    pipelining = True

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when no hook is set
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class OutboxHandler(Pipelining):
    def __init__(self, directory: Path) -> None:
        # Maildir(create=True) makes tmp/new/cur only when the directory itself is new.
        directory.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(str(directory), create=True)
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        head = f"X-Envelope-From: {envelope.mail_from}\r\n".encode()
        head += f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        self.maildir.add(head + data)
        return "250 OK: kept in outbox"


def start_sink(directory: Path, host: str = "127.0.0.1", port: int = 8025) -> Controller:
    controller = Controller(
        OutboxHandler(directory),
        hostname=host,
        port=port,
        enable_SMTPUTF8=True,
        data_size_limit=50 * 1024 * 1024,
    )
    controller.start()
    return controller


@dataclass(frozen=True)
class OutboxItem:
    key: str
    message: EmailMessage
    received: float

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        return str(self.message.get("To", ""))

    def body(self, subtype: str) -> str:
        part = self.message.get_body(preferencelist=(subtype,))
        return "" if part is None else str(part.get_content())


class Outbox:
    """Read side of the sink's Maildir, newest first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _box(self) -> mailbox.Maildir | None:
        if not (self.directory / "cur").exists():
            return None
        return mailbox.Maildir(str(self.directory), create=False)

    def items(self, limit: int = 100) -> list[OutboxItem]:
        box = self._box()
        if box is None:
            return []
        entries: list[tuple[float, str]] = []
        for key in box.iterkeys():
            entries.append((box.get_message(key).get_date(), key))
        entries.sort(reverse=True)
        return [self.get(key) for _, key in entries[:limit]]  # type: ignore[misc]

    def get(self, key: str) -> OutboxItem | None:
        box = self._box()
        if box is None:
            return None
        try:
            raw = box.get_bytes(key)
            date = box.get_message(key).get_date()
        except KeyError:
            return None
        msg: Any = message_from_bytes(raw, policy=policy.default)
        return OutboxItem(key=key, message=msg, received=date)

    def __iter__(self) -> Iterator[OutboxItem]:
        return iter(self.items(limit=10**9))
