"""VERP return paths: one envelope sender per message, signed so a bounce can be trusted.

Every message leaves with its own envelope sender,
`bounces+d{delivery_id}-{mac}@domain` (or `n{notification_id}` for confirm
and welcome mail), so a bounce names the message it is about without our
having to trust what the bouncing MTA quotes back. The MAC (HMAC-SHA256 of
the tag under the app secret, 8 hex digits) is what stops anyone who can
send us mail from unsubscribing people with forged bounces: a report acts
only when it carries a return path we made. The send path makes these and
`mailer.bounces` checks them, so they live here, below both.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Literal

from mailer.config import Settings
from mailer.mail.messages import sender_domain

TagKind = Literal["d", "n"]

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
