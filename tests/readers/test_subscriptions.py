"""The store's rules, on a real (SQLite) database."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.db import session_factory
from mailer.mail.tokens import Purpose, TokenError, Tokens
from mailer.models import (
    Notification,
    Status,
    Subscriber,
    Subscription,
    SubscriptionEvent,
    utcnow,
)
from mailer.readers import newsletters, suppressions
from mailer.readers import subscriptions as subs

tokens = Tokens("k", confirm_max_age=3600)


@pytest.fixture
def session(sqlite_url):
    s = session_factory(sqlite_url)()
    nl = newsletters.create_newsletter(
        s, "weekly-news", "Weekly News", "Weekly News <news@example.org>"
    )
    newsletters.ensure_topic(s, nl, "Science")
    newsletters.ensure_topic(s, nl, "World Politics")
    s.commit()
    yield s
    s.close()


def counts(session):
    return tuple(
        session.scalar(select(func.count()).select_from(m))
        for m in (Subscriber, Subscription, SubscriptionEvent, Notification)
    )


def token(purpose, sub):
    return tokens.make(purpose, sub.id, sub.generation)


def test_new_address_becomes_pending_with_audit_and_confirm_mail(session):
    out = subs.subscribe(
        session,
        email="Ann@Example.org",
        newsletter="weekly-news",
        topics=["science", "WORLD POLITICS"],
        ip="192.0.2.1",
    )
    sub = session.get(Subscription, out.subscription_id)
    assert out.state == "new" and sub.status is Status.PENDING
    assert sub.subscriber.email == "Ann@example.org"
    assert sorted(t.slug for t in sub.topics) == ["science", "world-politics"]
    assert sub.frequency.value == "weekly"
    event = session.scalars(select(SubscriptionEvent)).one()
    assert (event.old_status, event.new_status, event.source, event.ip) == (
        None,
        "pending",
        "web",
        "192.0.2.1",
    )
    assert [n.kind for n in session.scalars(select(Notification))] == ["confirm"]


def test_same_address_in_other_case_is_one_subscriber(session):
    subs.subscribe(session, email="ann@example.org", newsletter="weekly-news")
    subs.subscribe(
        session,
        email="ANN@EXAMPLE.ORG",
        newsletter="weekly-news",
        now=utcnow() + timedelta(hours=1),
    )
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
    assert session.scalar(select(func.count()).select_from(Subscription)) == 1


def test_pending_address_gets_confirm_again_at_most_every_ten_minutes(session):
    now = utcnow()
    subs.subscribe(session, email="a@example.org", newsletter="weekly-news", now=now)
    again = subs.subscribe(
        session, email="a@example.org", newsletter="weekly-news", now=now + timedelta(minutes=5)
    )
    assert again.state == "pending-recently-sent" and not again.notification_ids
    later = subs.subscribe(
        session, email="a@example.org", newsletter="weekly-news", now=now + timedelta(minutes=11)
    )
    assert later.state == "pending-resent" and len(later.notification_ids) == 1


def test_active_address_subscribing_again_changes_nothing(session):
    out = subs.subscribe(session, email="a@example.org", newsletter="weekly-news")
    sub = session.get(Subscription, out.subscription_id)
    subs.confirm(session, tokens, token(Purpose.CONFIRM, sub))
    before = counts(session)
    again = subs.subscribe(
        session, email="a@example.org", newsletter="weekly-news", topics=["science"]
    )
    assert again.state == "already-active" and counts(session) == before
    assert sub.topics == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"email": "not-an-address"}, "not valid"),
        ({"email": "a@example.org\r\nBcc: x@y.org"}, "line breaks"),
        ({"email": "a@example.org", "topics": ["astrology"]}, "Unknown topic"),
        ({"email": "a@example.org", "frequency": "hourly"}, "daily"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(session, kwargs, message):
    before = counts(session)
    with pytest.raises(newsletters.SubscriptionError, match=message):
        subs.subscribe(session, newsletter="weekly-news", **kwargs)
    session.rollback()
    assert counts(session) == before


def test_unknown_newsletter_is_refused(session):
    with pytest.raises(newsletters.UnknownNewsletter):
        subs.subscribe(session, email="a@example.org", newsletter="nope")


def test_confirm_activates_once_and_records_consent(session):
    sub = session.get(
        Subscription,
        subs.subscribe(session, email="a@example.org", newsletter="weekly-news").subscription_id,
    )
    first = subs.confirm(session, tokens, token(Purpose.CONFIRM, sub), ip="192.0.2.9")
    assert first.changed and sub.status is Status.ACTIVE
    assert (sub.consent_source, sub.consent_ip) == ("double-opt-in", "192.0.2.9")
    before = counts(session)
    second = subs.confirm(session, tokens, token(Purpose.CONFIRM, sub))
    assert not second.changed and counts(session) == before


def test_unsubscribe_is_final_and_idempotent(session):
    sub = session.get(
        Subscription,
        subs.subscribe(session, email="a@example.org", newsletter="weekly-news").subscription_id,
    )
    subs.confirm(session, tokens, token(Purpose.CONFIRM, sub))
    _, changed = subs.unsubscribe(session, tokens, token(Purpose.UNSUBSCRIBE, sub))
    assert changed and sub.status is Status.UNSUBSCRIBED
    before = counts(session)
    _, changed = subs.unsubscribe(session, tokens, token(Purpose.UNSUBSCRIBE, sub))
    assert not changed and counts(session) == before
    with pytest.raises(TokenError):
        subs.confirm(session, tokens, token(Purpose.CONFIRM, sub))


def test_resubscribe_is_a_fresh_opt_in_and_old_links_stop_working(session):
    sub = session.get(
        Subscription,
        subs.subscribe(session, email="a@example.org", newsletter="weekly-news").subscription_id,
    )
    subs.confirm(session, tokens, token(Purpose.CONFIRM, sub))
    old_unsubscribe = token(Purpose.UNSUBSCRIBE, sub)
    old_confirm = token(Purpose.CONFIRM, sub)
    subs.unsubscribe(session, tokens, old_unsubscribe)
    # Past the resend interval since the first confirmation (it holds on every path).
    later = utcnow() + timedelta(seconds=601)
    out = subs.subscribe(session, email="a@example.org", newsletter="weekly-news", now=later)
    assert out.state == "restarted" and sub.status is Status.PENDING and sub.generation == 2
    with pytest.raises(TokenError):
        subs.confirm(session, tokens, old_confirm)
    with pytest.raises(TokenError):
        subs.unsubscribe(session, tokens, old_unsubscribe)
    assert sub.status is Status.PENDING


def test_status_rules_refuse_impossible_transitions(session):
    sub = session.get(
        Subscription,
        subs.subscribe(session, email="a@example.org", newsletter="weekly-news").subscription_id,
    )
    subs.confirm(session, tokens, token(Purpose.CONFIRM, sub))
    subs.change_status(session, sub, Status.COMPLAINED, source="arf")
    with pytest.raises(subs.InvalidTransition):
        subs.change_status(session, sub, Status.ACTIVE, source="operator")


def test_suppressed_address_is_not_subscribed_but_answered_alike(session):
    suppressions.suppress(session, "Blocked@Example.org", reason="complaint")
    out = subs.subscribe(session, email="blocked@example.org", newsletter="weekly-news")
    assert out.state == "suppressed" and out.notification_ids == []
    assert session.scalar(select(func.count()).select_from(Subscription)) == 0


def test_preferences_change_topics_and_frequency(session):
    sub = session.get(
        Subscription,
        subs.subscribe(session, email="a@example.org", newsletter="weekly-news").subscription_id,
    )
    subs.update_preferences(
        session, tokens, token(Purpose.PREFERENCES, sub), topics=["Science"], frequency="daily"
    )
    assert [t.slug for t in sub.topics] == ["science"] and sub.frequency.value == "daily"


def test_unconfirmed_subscriptions_are_purged_after_the_configured_time(session):
    now = utcnow()
    subs.subscribe(
        session, email="old@example.org", newsletter="weekly-news", now=now - timedelta(days=40)
    )
    session.get(Subscription, 1).status_changed_at = now - timedelta(days=40)
    young = subs.subscribe(session, email="young@example.org", newsletter="weekly-news")
    assert subs.purge_pending(session, timedelta(days=30), now=now) == 1
    assert [s.id for s in session.scalars(select(Subscription))] == [young.subscription_id]
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_sender_with_header_injection_is_refused(session):
    with pytest.raises(newsletters.SubscriptionError, match="line breaks"):
        newsletters.create_newsletter(session, "x", "X", "X <x@example.org>\r\nBcc: y@example.org")
