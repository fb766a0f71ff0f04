"""Outside text can never reach a reader's address or links through our placeholders.

An article pushed over the real HTTP API (and one from a real feed) carries
every marker spelling in every field; the digest goes over a real SMTP
server, the preview and the public view over real HTTP, the test send over
SMTP, the outbox over the built-in sink. In each, the reader's address and
unsubscribe/preferences links appear once, in the template's own place, and
the markers in the content are shown as written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes, policy
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailer import config
from mailer.content import feeds
from mailer.editions import prepare, schedule
from mailer.mail.links import tokens_for
from mailer.mail.rendering import EmailRenderer
from mailer.mail.sink import Outbox, free_port, start_sink
from mailer.mail.tokens import Purpose
from mailer.models import DigestVariant, Feed, Frequency, Notification, utcnow
from mailer.readers import newsletters, notices, subscriptions
from mailer.sending import loop, testmail
from mailer.web.app import create_app
from tests.conftest import configure
from tests.fixtures.feedserver import FeedServer, Route
from tests.helpers import hostile
from tests.helpers.editions import add_reader, make_newsletter, parts

AUTH = {"Authorization": "Bearer test-api-token"}
READER = "reader@example.org"


def personal(settings: config.Settings) -> dict[str, str]:
    return hostile.personal(settings.base_url, READER)


def mail_parts(data: bytes) -> tuple[str, str]:
    return parts(message_from_bytes(data, policy=policy.default))


def push(base_url: str, body: dict[str, Any]) -> None:
    answer = httpx.post(f"{base_url}/api/articles", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def hostile_newsletter(session, settings, live_server):
    """A newsletter with one reader and one article, pushed over HTTP, hostile everywhere."""
    nl = make_newsletter(session)
    add_reader(session, nl, READER)
    session.commit()
    push(live_server, hostile.article(nl.slug))
    return nl


def prepare_edition(session, settings, nl) -> int:
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    prepared = prepare.prepare(
        session, settings, EmailRenderer(settings.email_templates), edition.id
    )
    session.commit()
    assert prepared.queued == 1
    return edition.id


def send(session, settings, digest_id: int) -> None:
    lo, hi = prepare.open_ranges(session, digest_id, 1000)[0]
    loop.send_range(session, settings, digest_id, lo, hi)


def test_markers_in_every_article_field_never_carry_the_readers_values_in_the_digest(
    session, settings, smtp_server, hostile_newsletter
):
    digest_id = prepare_edition(session, settings, hostile_newsletter)
    send(session, settings, digest_id)

    (mail,) = smtp_server.to(READER)
    text, html = mail_parts(mail.data)
    for part in (text, html):
        hostile.only_in_slots(part, personal(settings))
        hostile.markers_kept_as_written(part)
    # The image a mail client loads by itself carries the markers, not the reader.
    assert f'src="{hostile.url("pixel.png").replace("&", "&amp;")}"' in html


def test_a_feed_item_full_of_markers_reaches_no_reader_value(
    session, settings, smtp_server, monkeypatch
):
    nl = make_newsletter(session)
    add_reader(session, nl, READER)
    rss = f"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><title>Feed {hostile.TEXT}</title>
<link>{hostile.url("feed-story").replace("&", "&amp;")}</link>
<guid>feed-1</guid><pubDate>{format_datetime(utcnow() - timedelta(hours=1))}</pubDate>
<description>Feed summary {hostile.TEXT}</description>
<author>{hostile.MARKERS[1]}</author><category>{hostile.MARKERS[2]}</category>
<enclosure url="{hostile.url("feed.png").replace("&", "&amp;")}" type="image/png" length="1"/>
</item></channel></rss>"""
    server = FeedServer()
    server.routes["/feed.xml"] = Route(body=rss.encode())
    # The feed server is on this machine: fetches there are allowed for this test only.
    local = configure(monkeypatch, fetch_allow_private="true")
    try:
        feed = feeds.add_feed(session, nl, server.url("/feed.xml"))
        session.commit()
        assert feeds.poll(local, feed.id).status == "ok"
    finally:
        server.stop()
    assert session.scalar(select(Feed.error_count)) == 0
    send(session, settings, prepare_edition(session, settings, nl))

    (mail,) = smtp_server.to(READER)
    for part in mail_parts(mail.data):
        hostile.only_in_slots(part, personal(settings))
        assert "__MAILER_UNSUBSCRIBE_URL__" in part


def test_the_preview_shows_the_readers_values_only_in_their_slots(
    session, settings, live_server, hostile_newsletter
):
    answer = httpx.get(
        f"{live_server}/api/newsletters/{hostile_newsletter.slug}/preview",
        params={"subscriber": READER},
        headers=AUTH,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    hostile.only_in_slots(answer.text, personal(settings))
    hostile.markers_kept_as_written(answer.text)


def test_the_public_view_fills_only_the_templates_slots(
    session, settings, live_server, hostile_newsletter
):
    digest_id = prepare_edition(session, settings, hostile_newsletter)
    key = session.scalar(select(DigestVariant.key).where(DigestVariant.digest_id == digest_id))
    page = httpx.get(f"{live_server}/digest/{digest_id}", params={"v": key}, timeout=10)
    assert page.status_code == 200
    hostile.markers_kept_as_written(page.text)
    # The neutral stand-ins are in the two footer links, and nowhere in the content.
    assert page.text.count(f"{settings.base_url}/subscribe/{hostile_newsletter.slug}") == 2
    assert READER not in page.text and "/unsubscribe/" not in page.text


def test_the_operators_test_send_puts_the_address_only_in_its_slot(
    session, settings, smtp_server, hostile_newsletter
):
    reply, _ = testmail.send_test(
        session,
        settings,
        EmailRenderer(settings.email_templates),
        hostile_newsletter,
        "operator@example.org",
    )
    assert reply.ok
    (mail,) = smtp_server.to("operator@example.org")
    for part in mail_parts(mail.data):
        assert part.count("operator@example.org") == 1
        hostile.markers_kept_as_written(part)


def test_confirm_and_welcome_carry_markers_in_topic_and_newsletter_names_as_written(
    session, settings, smtp_server
):
    nl = newsletters.create_newsletter(
        session, "hostile", f"News {hostile.MARKERS[0]}", "News <news@example.org>"
    )
    for name in (f"Topic {hostile.MARKERS[0]}", f"Topic {hostile.MARKERS[1]}"):
        newsletters.ensure_topic(session, nl, name)
    topics = [t.slug for t in nl.topics]
    out = subscriptions.subscribe(session, email=READER, newsletter=nl.slug, topics=topics)
    session.commit()
    renderer = EmailRenderer(settings.email_templates)
    notices.send_notice(session, settings, renderer, out.notification_ids[0])
    sub = session.get_one(subscriptions.Subscription, out.subscription_id)
    token = tokens_for(settings).make(Purpose.CONFIRM, sub.id, sub.generation)
    confirmed = subscriptions.confirm(session, tokens_for(settings), token)
    session.commit()
    notices.send_notice(session, settings, renderer, confirmed.notification_ids[0])
    assert [n.status for n in session.scalars(select(Notification))] == ["sent", "sent"]

    confirm_mail, welcome_mail = smtp_server.to(READER)
    for mail in (confirm_mail, welcome_mail):
        text, html = mail_parts(mail.data)
        for part in (text, html):
            assert part.count(READER) == 1
            assert part.count(f"{settings.base_url}/unsubscribe/") <= 1
            assert "__MAILER_EMAIL__" in part
    assert "__MAILER_UNSUBSCRIBE_URL__" in mail_parts(welcome_mail.data)[0]


# -- the outbox of the embedded default ------------------------------------------------------


@pytest.fixture
def sink_settings(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path, web_port: int
) -> Iterator[config.Settings]:
    monkeypatch.delenv("MAILER_SMTP_URL", raising=False)
    settings = configure(
        monkeypatch,
        database_url=sqlite_url,
        data_dir=str(tmp_path),
        sink_port=str(free_port()),
        base_url=f"http://127.0.0.1:{web_port}",
    )
    controller = start_sink(settings.outbox_dir, settings.sink_host, settings.sink_port)
    yield settings
    controller.stop()
    config.get_settings.cache_clear()


def test_the_outbox_shows_the_digest_with_the_readers_values_only_in_their_slots(
    sink_settings: config.Settings,
) -> None:
    from mailer.db import session_factory

    session = session_factory(sink_settings.database)()
    try:
        nl = make_newsletter(session)
        add_reader(session, nl, READER)
        session.commit()
        with TestClient(create_app(sink_settings)) as client:
            pushed = client.post("/api/articles", json=hostile.article(nl.slug), headers=AUTH)
            assert pushed.status_code == 200, pushed.text
            send(session, sink_settings, prepare_edition(session, sink_settings, nl))
            (item,) = Outbox(sink_settings.outbox_dir).items()
            html = client.get(f"/outbox/{item.key}/html").text
            raw = client.get(f"/outbox/{item.key}/raw").content
    finally:
        session.close()
    text, _ = mail_parts(raw)
    for part in (text, html):
        hostile.only_in_slots(part, personal(sink_settings))
        hostile.markers_kept_as_written(part)
