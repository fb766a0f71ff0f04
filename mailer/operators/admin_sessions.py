"""Live /admin sessions, kept on the server so that logging out really ends one.

The cookie is signed and expires by itself, but a signature cannot be taken
back: a copy of the cookie (a shared machine, a proxy log) would stay good
for the rest of its hours after the operator logged out. A session is
therefore good only while its row is here; logout deletes the row.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailer.models import AdminSession, utcnow


def start(session: Session, lifetime: timedelta, now: datetime | None = None) -> str:
    """A new session id, live for `lifetime`; sessions already over are cleared out."""
    now = now or utcnow()
    session.execute(delete(AdminSession).where(AdminSession.expires_at <= now))
    sid = secrets.token_urlsafe(24)
    session.add(AdminSession(sid=sid, expires_at=now + lifetime))
    session.flush()
    return sid


def is_live(session: Session, sid: str, now: datetime | None = None) -> bool:
    expires = session.scalar(select(AdminSession.expires_at).where(AdminSession.sid == sid))
    return expires is not None and expires > (now or utcnow())


def end(session: Session, sid: str) -> None:
    session.execute(delete(AdminSession).where(AdminSession.sid == sid))
