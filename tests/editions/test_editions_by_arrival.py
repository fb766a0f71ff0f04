"""Editions by arrival as a property of the real store, on SQLite and PostgreSQL.

Random steps (feed polls and API pushes with past, present and future dates,
the same story from two feeds and by URL, updates, a new feed's old items;
daily and weekly cuts with failed deliveries; readers joining, leaving,
coming back, changing topics and frequency) are played on the store and on a
plain model of the rule (tests/helpers/arrival.py). Every edition must carry
each reader exactly the stories the model says: everything that became due
after their last cut and matches their topics, plus what failed, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, note, seed, settings

from mailer import db
from mailer.config import Settings
from mailer.models import Frequency, utcnow
from tests.helpers.arrival import (
    Cut,
    Join,
    Leave,
    Model,
    Poll,
    Prefs,
    Push,
    Step,
    Store,
    drain,
    empty,
    play,
    steps,
)

# About a minute per database on this machine.
BUDGET = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_settings(request, tmp_path) -> Iterator[Settings]:
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgresql"
        else request.getfixturevalue("sqlite_url")
    )
    yield Settings(database_url=url, data_dir=tmp_path, secret_key="k" * 32, digest_max_articles=2)


def run(settings_: Settings, plan: list[Step]) -> None:
    session = db.session_factory(settings_.database)()
    try:
        empty(session)
        store, model = Store(session, settings_), Model()
        play(store, model, plan)
        drain(store, model)
        assert store.sent_twice() == []
    finally:
        session.rollback()
        session.close()


@seed(17)
@BUDGET
@given(plan=steps)
def test_every_due_story_reaches_each_reader_in_exactly_one_edition(store_settings, plan):
    note(repr(plan))
    run(store_settings, plan)


# -- counter-examples and the issue's own cases, fixed ----------------------------------

D, W = Frequency.DAILY, Frequency.WEEKLY


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(
            [Join(0, D, frozenset()), Cut(D, frozenset()), Push((0, 1, 0)), Cut(D, frozenset())],
            id="an article dated before the cut, arriving after it, goes in the next edition",
        ),
        pytest.param(
            [Join(0, D, frozenset()), Poll(0, ((0, 0, 0), (1, 1, 0))), Cut(D, frozenset())],
            id="a new feed's month-old item is history, its recent one is due",
        ),
        pytest.param(
            [
                Join(0, W, frozenset()),
                Cut(W, frozenset()),
                Push((0, 2, 0)),
                Cut(D, frozenset()),
                Prefs(0, D, frozenset()),
                Push((1, 2, 0)),
                Cut(D, frozenset()),
                Cut(W, frozenset()),
            ],
            id="weekly to daily mid-week: everything since the weekly cut, once",
        ),
        pytest.param(
            [
                Join(0, D, frozenset()),
                Push((0, 2, 0)),
                Cut(D, frozenset()),
                Prefs(0, W, frozenset()),
                Push((1, 2, 0)),
                Cut(D, frozenset()),
                Cut(W, frozenset()),
            ],
            id="daily to weekly: the weekly carries what came after the last daily",
        ),
        pytest.param(
            [
                Join(0, D, frozenset()),
                Poll(0, ((2, 2, 0),)),
                Poll(1, ((2, 2, 0),)),
                Push((2, 2, 1)),
                Cut(D, frozenset()),
                Poll(1, ((2, 1, 1),)),
                Cut(D, frozenset()),
            ],
            id="one story from two feeds and the API, updated: once",
        ),
        pytest.param(
            [
                Join(0, D, frozenset()),
                Push((0, 2, 0)),
                Cut(D, frozenset({0})),
                Push((1, 2, 0)),
                Cut(D, frozenset()),
            ],
            id="a failed delivery's articles go in the next edition",
        ),
        pytest.param(
            [
                Join(0, D, frozenset()),
                Push((0, 2, 0)),
                Cut(D, frozenset({0})),
                Leave(0),
                Push((1, 2, 0)),
                Join(0, D, frozenset()),
                Cut(D, frozenset()),
            ],
            id="a reader who comes back starts afresh",
        ),
        pytest.param(
            [
                Join(0, D, frozenset({"a"})),
                Push((1, 2, 0)),
                Push((2, 2, 0)),
                Cut(D, frozenset()),
                Prefs(0, D, frozenset({"b"})),
                Cut(D, frozenset()),
            ],
            id="topics count as they are at each cut",
        ),
        pytest.param(
            [
                Join(0, D, frozenset()),
                Poll(0, ((0, 2, 0),)),
                Cut(D, frozenset()),
                Poll(1, ((0, 2, 0),)),
                Cut(D, frozenset()),
            ],
            id="the same story under another spelling from a second feed is not sent again",
        ),
        pytest.param(
            [
                Join(0, D, frozenset()),
                Cut(D, frozenset()),
                Leave(0),
                Push((0, 2, 0)),
                Cut(D, frozenset()),
                Join(0, D, frozenset()),
                Cut(D, frozenset()),
            ],
            id="what was cut while a reader was away is not theirs when they come back",
        ),
    ],
)
def test_fixed_sequences_hold_the_rule(store_settings, plan):
    run(store_settings, plan)


# -- an arrival racing a cut (PostgreSQL, where they really run at once) ----------------


def test_an_article_stored_while_an_edition_is_cut_goes_in_exactly_one_edition(settings, session):
    """The cut waits for an arrival already timed and not yet committed, and carries
    it; an arrival timed after the cut goes in the next edition: never both, never
    neither."""
    import threading

    from sqlalchemy import text as sql

    from mailer.content import articles as arts
    from mailer.content import incoming
    from mailer.editions import prepare, reservations, schedule
    from mailer.mail.rendering import EmailRenderer
    from mailer.readers import newsletters
    from mailer.readers import subscriptions as subs
    from tests.conftest import wait_for

    nl = newsletters.create_newsletter(session, "news", "News", "News <news@example.org>")
    subs.subscribe(
        session, email="ann@example.org", newsletter="news", frequency="daily", confirmed=True
    )
    session.commit()
    renderer = EmailRenderer(settings.email_templates)

    def cut_in_a_thread(minute: datetime | None = None) -> tuple[threading.Thread, dict[str, int]]:
        done: dict[str, int] = {}

        def work() -> None:
            with db.session_factory(settings.database)() as other:
                edition = schedule.create_now(
                    other, other.get_one(type(nl), nl.id), Frequency.DAILY, minute
                )
                other.commit()
                prepare.prepare(other, settings, renderer, edition.id)
                other.commit()
                done["edition"] = edition.id

        thread = threading.Thread(target=work)
        thread.start()
        return thread, done

    def waiting_for_the_arrival_lock() -> bool:
        with db.session_factory(settings.database)() as probe:
            return bool(
                probe.scalar(
                    sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                )
            )

    arriving = db.session_factory(settings.database)()
    raw = incoming.RawArticle(url="https://news.example.org/racing", title="Racing the cut")
    story, _ = arts.upsert_article(arriving, nl, "api:1", incoming.normalise(raw, base_url=None))
    thread, done = cut_in_a_thread()
    wait_for(waiting_for_the_arrival_lock)  # the cut waits for the timed arrival
    arriving.commit()
    arriving.close()
    thread.join(timeout=60)
    first = done["edition"]
    assert {a for _, a in reservations.reserved_articles(session, first)} == {story.id}

    # Timed after a cut: the next edition's (an edition of the next minute: its row
    # needs a window end of its own; what it carries is decided by its cut).
    later = db.session_factory(settings.database)()
    raw = incoming.RawArticle(url="https://news.example.org/after", title="After the cut")
    after, _ = arts.upsert_article(later, nl, "api:1", incoming.normalise(raw, base_url=None))
    later.commit()
    later.close()
    thread, done = cut_in_a_thread(utcnow() + timedelta(minutes=1))
    thread.join(timeout=60)
    assert {a for _, a in reservations.reserved_articles(session, done["edition"])} == {after.id}
