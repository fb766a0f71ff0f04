"""Inside a namespace of its own (tests/helpers/netns.py): a relay that offers AUTH but no
STARTTLS, on a given address, and a notice and a digest edition sent to it with a login.
Prints what came of them as JSON: what the relay got, and the rows as they were left."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import select

from mailer import config, migrate
from mailer.db import session_factory
from mailer.mail.rendering import EmailRenderer
from mailer.models import Delivery, Notification
from mailer.readers import notices
from mailer.sending import loop
from tests.helpers.editions import sendable_edition
from tests.helpers.notices import queue_confirm
from tests.smtp import password_check, start_smtp_server

USER, PASSWORD = "mailer@example.org", "secret-password-42"


def main(address: str, data_dir: str) -> None:
    warnings.simplefilter("ignore")  # aiosmtpd warns about AUTH without TLS: that is the point
    relay = start_smtp_server(
        host=address, authenticator=password_check(USER, PASSWORD), auth_require_tls=False
    )
    url = f"sqlite:///{Path(data_dir) / 'netns.db'}"
    migrate.upgrade(url)
    os.environ.update(
        MAILER_DATABASE_URL=url,
        MAILER_DATA_DIR=data_dir,
        MAILER_SMTP_URL=f"smtp://{quote(USER, safe='')}:{quote(PASSWORD)}@{address}:{relay.port}",
    )
    config.get_settings.cache_clear()
    settings = config.get_settings()
    session = session_factory(url)()
    out: dict[str, object] = {}
    note_id = queue_confirm(session, "reader@example.com")
    try:
        out["notice"] = notices.send_notice(
            session, settings, EmailRenderer(settings.email_templates), note_id
        )
    except notices.TemporaryFailure as exc:
        out["notice"] = f"temporary failure: {exc}"
    session.expire_all()
    note = session.get_one(Notification, note_id)
    out["notice_row"] = [note.status, note.last_error]
    digest_id, lo, hi, _ = sendable_edition(session, settings, 3)
    try:
        out["digest"] = loop.send_range(session, settings, digest_id, lo, hi).sent
    except loop.TemporaryFailure as exc:
        out["digest"] = f"temporary failure: {exc}"
    session.expire_all()
    rows = session.scalars(select(Delivery).where(Delivery.digest_id == digest_id)).all()
    out["delivery_rows"] = sorted({f"{r.status.value}/{r.attempts}" for r in rows})
    out["received"] = [[r.login, r.rcpt_tos[0]] for r in relay.received]
    print(json.dumps(out))
    session.close()
    relay.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
