"""The operator's test send: the next edition's mail to one address, marked [TEST].

It goes through the same template, signature and transport as a real send,
and is recorded nowhere: no delivery row, no reservation.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import make_msgid

from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.editions import preview
from mailer.mail.messages import Slot
from mailer.mail.rendering import EmailRenderer
from mailer.mail.transport import ConnectionLost, Reply, close, connect, send
from mailer.models import Newsletter
from mailer.sending.loop import Opener
from mailer.sending.outgoing import Outgoing, envelope_sender, message_template


class DeliveryError(ValueError):
    """A send request we refuse; the message says why."""


def send_test(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    newsletter: Newsletter,
    to: str,
    *,
    opener: Opener | None = None,
    now: datetime | None = None,
) -> tuple[Reply, str]:
    """The next edition's mail to one address, marked [TEST], recorded nowhere."""
    from mailer.readers.addresses import InvalidAddress, normalise

    try:
        address = normalise(to).email
    except InvalidAddress as exc:
        raise DeliveryError(str(exc)) from exc
    draft = preview.draft(session, settings, renderer, newsletter, now=now)
    template = message_template(
        settings,
        newsletter,
        f"[TEST] {draft.rendered.subject}",
        draft.rendered.html,
        draft.rendered.text,
        draft.slots,
    )
    values = preview.neutral_values(settings, newsletter)
    values[Slot.EMAIL] = address
    message_id = make_msgid(idstring="test", domain=template.domain)
    data, _ = template.build(
        address,
        unsubscribe_url=values[Slot.UNSUBSCRIBE_URL],
        values=values,
        message_id=message_id,
    )
    try:
        conn = opener() if opener else connect(settings.smtp, settings.smtp_timeout)
    except ConnectionLost as exc:
        raise DeliveryError(str(exc)) from exc
    data = Outgoing.for_newsletter(settings, newsletter).sign(data)
    try:
        reply = send(conn, envelope_sender(newsletter.sender), address, data)
    except ConnectionLost as exc:
        raise DeliveryError(f"the SMTP connection broke: {exc}") from exc
    finally:
        close(conn)
    return reply, message_id
