"""A message on its way out: the template of a newsletter's mail, the reader's bytes, the envelope.

Everything but the reader is built once per variant per batch
(`variant_template`); per reader only string replacement and QP remain
(`personalise`), then the VERP return path and the DKIM signature (`Outgoing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parseaddr

from mailer.config import Settings
from mailer.mail.dkim import DKIMSigner, signer_for
from mailer.mail.links import Links, Tokened
from mailer.mail.messages import MessageTemplate, Slot, Slots
from mailer.mail.verp import ReturnPaths, return_paths
from mailer.models import DigestVariant, Newsletter
from mailer.readers.notices import list_id, unsubscribe_mailto


def envelope_sender(sender: str) -> str:
    return parseaddr(sender)[1] or sender


@dataclass(frozen=True)
class Outgoing:
    """What every message of a newsletter gets on its way out, built once per batch:
    its own VERP return path (so a bounce names the delivery it is about) and,
    when MAILER_DKIM_* are set, a DKIM signature as the very last step."""

    sender: str
    paths: ReturnPaths
    signer: DKIMSigner | None

    @classmethod
    def for_newsletter(cls, settings: Settings, newsletter: Newsletter) -> Outgoing:
        return cls(newsletter.sender, return_paths(settings), signer_for(settings))

    def return_path(self, delivery_id: int) -> str:
        return self.paths.for_delivery(delivery_id, self.sender)

    def sign(self, message: bytes | list[bytes]) -> bytes:
        """The wire bytes, signed when DKIM is on (the message may come in its parts)."""
        if self.signer is not None:
            return self.signer.sign(message)
        return message if isinstance(message, bytes) else b"".join(message)


def message_template(
    settings: Settings,
    newsletter: Newsletter,
    subject: str,
    html: str,
    text: str,
    slots: Slots,
) -> MessageTemplate:
    return MessageTemplate(
        sender=newsletter.sender,
        subject=subject,
        html=html,
        text=text,
        list_id=list_id(newsletter, settings),
        list_unsubscribe_mailto=unsubscribe_mailto(newsletter, settings),
        extra_headers={"Precedence": "bulk"},
        slots=slots,
    )


def variant_template(
    settings: Settings, newsletter: Newsletter, variant: DigestVariant
) -> MessageTemplate:
    """A variant's message, everything but the reader, with the slots it was rendered with."""
    return message_template(
        settings,
        newsletter,
        variant.subject,
        variant.html,
        variant.text,
        Slots.stored(variant.slots),
    )


def personalise(
    template: MessageTemplate, links: Links, sub: Tokened, email: str, message_id: str
) -> list[bytes]:
    """The reader's wire bytes, as the parts they join from (what the DKIM signer
    takes): string replacement and QP only, no MIME building."""
    unsubscribe = links.unsubscribe(sub)
    parts, _ = template.build_parts(
        email,
        unsubscribe_url=unsubscribe,
        values={
            Slot.EMAIL: email,
            Slot.UNSUBSCRIBE_URL: unsubscribe,
            Slot.PREFERENCES_URL: links.preferences(sub),
        },
        message_id=message_id,
    )
    return parts
