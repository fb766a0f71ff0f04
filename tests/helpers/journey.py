"""The reader's side of a test over HTTP and SMTP: the mail they got, the links in it."""

from __future__ import annotations

import re

from tests.conftest import wait_for
from tests.smtp import Received, SMTPServer


def mails_to(smtp_server: SMTPServer, address: str, n: int) -> list[Received]:
    """Wait until the server holds at least `n` mails to `address`; return them all."""
    return wait_for(lambda: len(smtp_server.to(address)) >= n and smtp_server.to(address))


def link(message, path: str) -> str:
    """The first `/{path}/…` link in a mail's text part (confirm, unsubscribe, …)."""
    text = message.get_body(("plain",)).get_content()
    found = re.search(rf"(http://\S+/{path}/\S+)", text)
    assert found, f"no /{path}/ link in:\n{text}"
    return found.group(1)
