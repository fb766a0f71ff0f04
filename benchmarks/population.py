"""The benchmark's newsletter: N active readers over a few topic sets, and a day of articles.

Written with INSERT … SELECT generate_series rather than through the
subscribe path: the benchmarks measure sending, and a million ORM
subscribes would take longer than the send itself. Readers who chose only
topic "e" get nothing (no article carries it), so "messages == readers who
had articles" is a check of the count.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

DOMAIN = "bench.example.org"
SENDER = "The Bench <news@news.example.org>"
# Topic sets readers cycle through. Articles carry topics a..d only, so the
# readers who chose just "e" have nothing new: they get a `skipped` row and
# no mail, which is what makes "messages == readers who had articles" a check.
TOPIC_SETS: tuple[tuple[str, ...], ...] = ((), ("a",), ("b", "c"), ("d",), ("e",), ("a", "d"))
ARTICLE_TOPICS: tuple[tuple[str, ...], ...] = (("a",), ("b",), ("c",), ("d",), ("a", "b"))


def email(i: int) -> str:
    return f"reader{i:06d}@{DOMAIN}"


def has_articles(i: int) -> bool:
    return TOPIC_SETS[i % len(TOPIC_SETS)] != ("e",)


def populate(url: str, readers: int, articles: int) -> tuple[int, int]:
    """Newsletter, topics, readers and articles; returns (newsletter id, edition id).

    Readers are written with INSERT … SELECT generate_series: the benchmark
    is about sending, and 100,000 ORM subscribes would take longer than it.
    """
    from mailer import db
    from mailer.editions import schedule
    from mailer.models import Frequency, Newsletter, Schedule
    from mailer.readers import newsletters

    session = db.session_factory(url)()
    nl = newsletters.create_newsletter(
        session,
        "bench",
        "The Bench",
        SENDER,
        default_frequency=Frequency.DAILY,
        site_url="https://news.example.org",
    )
    # A schedule that never falls due, so nothing but the benchmark makes editions.
    session.add(Schedule(newsletter_id=nl.id, frequency=Frequency.DAILY, cron="0 0 29 2 *"))
    topic_ids = {t: newsletters.ensure_topic(session, nl, t).id for t in "abcde"}
    session.flush()
    params = {"nl": nl.id, "n": readers, "domain": DOMAIN}
    session.execute(
        text(
            "INSERT INTO subscriber (email, email_key, created_at) "
            "SELECT e, e, now() FROM (SELECT 'reader' || lpad(i::text, 6, '0') || '@' || :domain "
            "AS e FROM generate_series(0, :n - 1) i) s"
        ),
        params,
    )
    session.execute(
        text(
            "INSERT INTO subscription (subscriber_id, newsletter_id, status, frequency, "
            "generation, created_at, status_changed_at, confirmed_at, soft_bounces) "
            "SELECT id, :nl, 'active', 'daily', 1, now(), now(), now(), 0 FROM subscriber "
            "WHERE email_key LIKE '%@' || :domain ORDER BY email_key"
        ),
        params,
    )
    for index, names in enumerate(TOPIC_SETS):
        for name in names:
            session.execute(
                text(
                    "INSERT INTO subscription_topic (subscription_id, topic_id) "
                    "SELECT s.id, :topic FROM subscription s JOIN subscriber r "
                    "ON r.id = s.subscriber_id WHERE s.newsletter_id = :nl "
                    "AND substring(r.email_key from 7 for 6)::int % :sets = :index"
                ),
                params | {"topic": topic_ids[name], "sets": len(TOPIC_SETS), "index": index},
            )
    from mailer.models import Article, utcnow

    now = utcnow()
    for i in range(articles):
        url = f"https://news.example.org/2024/story-{i}"
        article = Article(
            newsletter_id=nl.id,
            source="bench",
            guid=url,
            url=url,
            title=f"Story {i}: what happened in the {i}th hour",
            summary=(f"A summary of story {i}, long enough to look like one. " * 6).strip(),
            author="A. Writer",
            published_at=now - timedelta(hours=23 - i * 23 / max(1, articles)),
        )
        article.arrived_at = article.due_at = article.published_at
        article.topics = [
            newsletters.ensure_topic(session, nl, t)
            for t in ARTICLE_TOPICS[i % len(ARTICLE_TOPICS)]
        ]
        session.add(article)
    session.flush()
    newsletter = session.get_one(Newsletter, nl.id)
    edition = schedule.create_now(session, newsletter, Frequency.DAILY)
    session.commit()
    session.execute(text("ANALYZE"))
    session.commit()
    out = (nl.id, edition.id)
    session.close()
    return out
