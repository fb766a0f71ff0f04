"""The web judges subscribe requests against a newsletter's offer, kept a few seconds."""

from __future__ import annotations

import pytest

from mailer import db
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs


@pytest.fixture
def sessions(sqlite_url):
    return db.session_factory(sqlite_url)


def make(sessions, slug: str, *topics: str) -> None:
    with sessions() as session:
        nl = newsletters.create_newsletter(session, slug, slug.title(), f"{slug}@example.org")
        for name in topics:
            newsletters.ensure_topic(session, nl, name)
        session.commit()


def test_a_kept_offer_answers_without_the_database_until_it_expires(sessions):
    make(sessions, "news", "Python")
    offers = newsletters.Offers(sessions, ttl=3600)
    assert offers.get("news").topic_slugs == {"python": "python"}
    with sessions() as session:
        newsletters.ensure_topic(session, newsletters.get_newsletter(session, "news"), "Rust")
        session.commit()
    with pytest.raises(newsletters.SubscriptionError, match="Unknown topic"):
        subs.check_request(offers.get("news"), email="a@example.org", topics=["rust"])
    offers.ttl = 0  # expired: the new topic is seen
    checked = subs.check_request(offers.get("news"), email="a@example.org", topics=["Rust"])
    assert checked.topics == ["rust"]


def test_an_unknown_newsletter_is_looked_up_again_and_found_once_made(sessions):
    offers = newsletters.Offers(sessions, ttl=3600)
    with pytest.raises(newsletters.UnknownNewsletter):
        offers.get("later")
    make(sessions, "later")
    assert offers.get("later").slug == "later"


def test_the_web_check_and_the_worker_check_agree(sessions):
    """One set of rules: a topic by slug or name, once; an unknown one refused by name."""
    make(sessions, "news", "Python", "Data Science")
    offer = newsletters.Offers(sessions).get("news")
    checked = subs.check_request(
        offer,
        email="A@Example.org",
        topics=["PYTHON", "python", "data science"],
        frequency="Weekly",
    )
    with sessions() as session:
        valid = subs.validate_request(
            session,
            email="A@Example.org",
            newsletter="news",
            topics=["PYTHON", "python", "data science"],
            frequency="Weekly",
        )
        assert [t.slug for t in valid.topics] == checked.topics == ["python", "data-science"]
        assert valid.frequency is checked.frequency
        assert valid.address == checked.address
        with pytest.raises(
            newsletters.SubscriptionError, match=r"Unknown topic.*: golf"
        ) as refused:
            subs.validate_request(
                session, email="a@example.org", newsletter="news", topics=["golf"]
            )
    assert refused.value.field == "topics"
