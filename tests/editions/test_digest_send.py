"""Digests end to end: PostgreSQL, a real Celery worker on Redis, a real SMTP server."""

from __future__ import annotations

import html as html_mod
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from mailer import tasks
from mailer.editions import errors, prepare, reservations, schedule
from mailer.mail.links import tokens_for
from mailer.mail.rendering import EmailRenderer
from mailer.mail.tokens import Purpose
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestVariant,
    Frequency,
    Status,
    utcnow,
)
from mailer.readers import subscriptions as subs
from mailer.readers import suppressions
from mailer.sending import loop
from tests.conftest import configure
from tests.helpers.editions import (
    SITE,
    add_article,
    add_reader,
    hrefs,
    make_newsletter,
    parts,
    statuses,
    wait_done,
)


@pytest.fixture
def renderer(settings):
    return EmailRenderer(settings.email_templates)


def trigger(session, nl) -> int:
    """What `mailer digest send` and the schedule do: an edition now, prepared by a task."""
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    session.commit()
    tasks.prepare_digest.delay(edition.id)
    return edition.id


def test_each_reader_gets_exactly_their_articles_and_links(
    session, settings, smtp_server, celery_worker
):
    nl = make_newsletter(session)
    everything = add_reader(session, nl, "all@example.org")
    pythonista = add_reader(session, nl, "py@example.org", topics=["Python"])
    rustacean = add_reader(session, nl, "rust@example.org", topics=["Rust"])
    add_article(session, nl, "Python 4 & <friends>", hours_ago=1, topics=["Python"])
    add_article(session, nl, "Rust in the kernel", hours_ago=2, topics=["Rust"])
    # Arrived before the readers' first cut starts (a day back): nobody's.
    add_article(session, nl, "Old news", hours_ago=30, arrived_hours_ago=30)
    # The same story through a second feed: sent once.
    add_article(session, nl, "Rust in the kernel (mirror)", hours_ago=3, topics=["Rust"],
                url=f"{SITE}/rust-in-the-kernel/", source="other-feed")  # fmt: skip
    session.commit()

    digest_id = trigger(session, nl)
    wait_done(session, digest_id)

    assert {e: s.value for e, s in statuses(session, digest_id).items()} == {
        "all@example.org": "sent",
        "py@example.org": "sent",
        "rust@example.org": "sent",
    }
    tokens = tokens_for(settings)
    expected = {
        "all@example.org": (everything, ["Python 4 & <friends>", "Rust in the kernel"]),
        "py@example.org": (pythonista, ["Python 4 & <friends>"]),
        "rust@example.org": (rustacean, ["Rust in the kernel"]),
    }
    for email, (sub, titles) in expected.items():
        [received] = smtp_server.to(email)
        msg = received.message
        text, page = parts(msg)
        assert msg["To"] == email
        assert msg["From"] == "The News <news@news.example.org>"
        assert msg["Subject"].startswith("The News: " + titles[0])
        assert msg["Precedence"] == "bulk"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert msg["List-Id"].startswith("The News <news.")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith(
            "@news.example.org>"
        )
        assert all(len(line) <= 998 for line in received.data.split(b"\r\n"))
        assert b"\n" not in received.data.replace(b"\r\n", b"")
        # Exactly their articles, in both parts, newest first; HTML escaped.
        for title in titles:
            assert html_mod.escape(title) in page and title in text
        others = {"Python 4 & <friends>", "Rust in the kernel", "Old news"} - set(titles)
        for title in others:
            assert html_mod.escape(title) not in page and title not in text
        assert "<friends>" not in page and "mirror" not in page
        assert [t for t in titles if t in text] == sorted(titles, key=text.index)
        # Their own links: unsubscribe and preferences tokens name their subscription.
        links = hrefs(page)
        unsubscribe = next(u for u in links if "/unsubscribe/" in u)
        preferences = next(u for u in links if "/preferences/" in u)
        assert tokens.read(Purpose.UNSUBSCRIBE, unsubscribe.rsplit("/", 1)[1]).subscription_id == (
            sub.id
        )
        assert tokens.read(Purpose.PREFERENCES, preferences.rsplit("/", 1)[1]).subscription_id == (
            sub.id
        )
        assert msg["List-Unsubscribe"].startswith(f"<{unsubscribe}>")
        assert unsubscribe in text and preferences in text
        assert any(u.startswith(f"{settings.base_url}/digest/{digest_id}?v=") for u in links)
        assert email in page and "__MAILER_" not in page + text
    # Three readers, three article lists: three variants, each rendered once.
    assert session.scalar(select(func.count()).select_from(DigestVariant)) == 3


def test_unsubscribed_suppressed_bounced_and_pending_readers_get_nothing(
    session, settings, smtp_server, celery_worker
):
    nl = make_newsletter(session)
    add_reader(session, nl, "keen@example.org")
    add_reader(session, nl, "gone@example.org", status=Status.UNSUBSCRIBED)
    add_reader(session, nl, "bounced@example.org", status=Status.BOUNCED)
    add_reader(session, nl, "unsure@example.org", status=Status.PENDING)
    add_reader(session, nl, "blocked@example.org")
    suppressions.suppress(session, "Blocked@example.org", "operator")
    add_article(session, nl, "Headline")
    session.commit()

    digest_id = trigger(session, nl)
    wait_done(session, digest_id)

    assert [r.rcpt_tos for r in smtp_server.received] == [["keen@example.org"]]
    assert {e: s.value for e, s in statuses(session, digest_id).items()} == {
        "keen@example.org": "sent",
        "blocked@example.org": "skipped",
    }


def test_second_trigger_sends_nothing_new(session, settings, smtp_server, celery_worker):
    nl = make_newsletter(session)
    add_reader(session, nl, "a@example.org")
    add_reader(session, nl, "b@example.org")
    add_article(session, nl, "First story")
    session.commit()
    first = trigger(session, nl)
    wait_done(session, first)
    assert trigger(session, nl) == first  # same minute: the same edition
    # A later edition with nothing published since: every reader skipped, no mail.
    later = schedule.create_edition(
        session, nl.id, Frequency.DAILY, utcnow() + timedelta(minutes=2)
    )
    session.commit()
    tasks.prepare_digest.delay(later.id)
    wait_done(session, later.id)
    assert len(smtp_server.received) == 2
    assert set(statuses(session, later.id).values()) == {DeliveryStatus.SKIPPED}


def test_updated_or_reappearing_article_is_not_sent_twice(session, settings, renderer, smtp_server):
    nl = make_newsletter(session)
    add_reader(session, nl, "reader@example.org")
    story = add_article(session, nl, "Big story", hours_ago=2)
    session.commit()
    first = schedule.create_edition(session, nl.id, Frequency.DAILY, utcnow() - timedelta(hours=1))
    prepared = prepare.prepare(session, settings, renderer, first.id)
    session.commit()
    loop.send_range(session, settings, first.id, *prepared.ranges[0])
    # The feed updates the story (new published time, inside the next window),
    # and a second feed carries the same URL: neither is new for this reader.
    story.published_at = utcnow() - timedelta(minutes=30)
    story.title = "Big story (updated)"
    add_article(session, nl, "Big story again", hours_ago=0.2, url=story.url, source="feed-b")
    fresh = add_article(session, nl, "Fresh story", hours_ago=0.1)
    session.commit()
    second = schedule.create_now(session, nl, Frequency.DAILY)
    prepared = prepare.prepare(session, settings, renderer, second.id)
    session.commit()
    loop.send_range(session, settings, second.id, *prepared.ranges[0])

    first_mail, second_mail = [r.message for r in smtp_server.received]
    assert "Big story" in parts(first_mail)[0]
    text = parts(second_mail)[0]
    assert "Fresh story" in text and "Big story" not in text
    sent = sorted(article for _, article in reservations.reserved_articles(session))
    assert sent == [story.id, fresh.id]


def test_reader_who_unsubscribes_after_prepare_is_not_mailed(
    session, settings, renderer, smtp_server
):
    nl = make_newsletter(session)
    stays = add_reader(session, nl, "stays@example.org")
    leaves = add_reader(session, nl, "leaves@example.org")
    add_article(session, nl, "Story")
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    prepared = prepare.prepare(session, settings, renderer, edition.id)
    session.commit()
    subs.change_status(session, leaves, Status.UNSUBSCRIBED, source="test")
    session.commit()

    result = loop.send_range(session, settings, edition.id, *prepared.ranges[0])

    assert (result.sent, [r.rcpt_tos for r in smtp_server.received]) == (
        1,
        [["stays@example.org"]],
    )
    row = session.scalars(select(Delivery).where(Delivery.subscription_id == leaves.id)).one()
    assert (row.status, row.smtp_reply) == (
        DeliveryStatus.SKIPPED,
        "not mailed: subscription unsubscribed",
    )
    # Its articles are given back: a later resubscription may still get them.
    assert leaves.id not in {sub_id for sub_id, _ in reservations.reserved_articles(session)}
    assert stays.id != leaves.id


def test_past_the_cap_articles_are_listed_by_title_and_link_and_count_as_delivered(
    session, settings, renderer, smtp_server
):
    settings.digest_max_articles = 2
    nl = make_newsletter(session)
    add_reader(session, nl, "reader@example.org")
    for i in range(5):
        add_article(session, nl, f"Story {i}", hours_ago=1 + i)
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    prepared = prepare.prepare(session, settings, renderer, edition.id)
    session.commit()
    loop.send_range(session, settings, edition.id, *prepared.ranges[0])

    text, page = parts(smtp_server.received[0].message)
    assert "1. Story 0" in text and "2. Story 1" in text and "About Story 1." in text
    # The other three: title and link under "Also new", no summary, and delivered.
    assert "Also new:\r\n- Story 2 [" in text and "About Story 2." not in text
    assert {f"{SITE}/story-{i}" for i in range(5)} <= set(hrefs(page))
    held = {a for _, a in reservations.reserved_articles(session, edition.id)}
    assert len(held) == 5


def test_preparing_twice_makes_one_set_of_rows(session, settings, renderer, smtp_server):
    nl = make_newsletter(session)
    add_reader(session, nl, "reader@example.org")
    add_article(session, nl, "Story")
    session.commit()
    edition = schedule.create_now(session, nl, Frequency.DAILY)
    first = prepare.prepare(session, settings, renderer, edition.id)
    session.commit()
    again = prepare.prepare(session, settings, renderer, edition.id)
    session.commit()
    assert first.ranges == again.ranges
    assert session.scalar(select(func.count()).select_from(Delivery)) == 1
    assert session.get(Digest, edition.id).status == "sending"


def test_unknown_edition_is_a_clear_error(session, settings, renderer):
    with pytest.raises(errors.DigestError, match="no edition 999"):
        prepare.prepare(session, settings, renderer, 999)


def test_a_big_edition_leaves_the_planner_fresh_statistics_for_its_claims(pg_url, monkeypatch):
    """Claims filter on `digest_id = N`: with statistics from before the rows were
    written, PostgreSQL read the whole edition's index entries in every claim."""
    from benchmarks.population import populate
    from mailer import config, db

    configure(monkeypatch, database_url=pg_url)
    _, digest_id = populate(pg_url, prepare.ANALYZE_AFTER, 2)
    settings = config.get_settings()
    with db.session_scope(pg_url) as session:
        prepare.prepare(session, settings, EmailRenderer(settings.email_templates), digest_id)
    with db.session_scope(pg_url) as session:
        estimated = session.scalar(
            text("SELECT reltuples FROM pg_class WHERE relname = 'delivery'")
        )
    assert estimated == prepare.ANALYZE_AFTER
