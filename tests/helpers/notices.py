"""Helpers for tests of the confirm and welcome notices."""

from __future__ import annotations

from mailer.readers import newsletters
from mailer.readers import subscriptions as subs


def queue_confirm(session, email):
    """A reader subscribed to a fresh newsletter "n": the id of their queued confirm notice."""
    newsletters.create_newsletter(session, "n", "N", "N <n@example.org>")
    out = subs.subscribe(session, email=email, newsletter="n")
    session.commit()
    return out.notification_ids[0]
