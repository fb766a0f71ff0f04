"""Who gets which articles, how readers group into variants, how sends are chunked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailer.editions.prepare import chunk_ranges
from mailer.editions.selection import Item, Selection, group_variants, select_for
from mailer.sending.marks import backoff

NOW = datetime(2024, 5, 6, 8, tzinfo=UTC)


def item(i: int, topics=(), url: str | None = None, due_hours_ago: int | None = None) -> Item:
    return Item(
        id=i,
        url=url or f"https://example.org/{i}",
        title=f"Story {i}",
        summary="",
        image_url=None,
        author=None,
        published_at=NOW - timedelta(hours=i),
        topic_ids=frozenset(topics),
        due_at=NOW - timedelta(hours=i if due_hours_ago is None else due_hours_ago),
    )


ITEMS = [item(1, {10}), item(2, {20}), item(3, {10, 20}), item(4)]


def test_reader_without_topics_gets_everything_newest_first():
    assert select_for(ITEMS, frozenset(), set(), set(), cap=10) == Selection((1, 2, 3, 4), 4)


def test_reader_gets_only_articles_matching_one_of_their_topics():
    assert select_for(ITEMS, frozenset({20}), set(), set(), 10).article_ids == (2, 3)


def test_articles_already_sent_by_id_or_by_url_are_left_out():
    sent_urls = {"example.org/3"}  # the same story under another spelling
    got = select_for(ITEMS, frozenset(), {1}, sent_urls, 10)
    assert got.article_ids == (2, 4)


def test_past_the_cap_articles_are_still_carried_compactly():
    """The first `cap` in full, the rest listed by title and link; all of them delivered."""
    got = select_for(ITEMS, frozenset(), set(), set(), cap=2)
    assert got == Selection((1, 2, 3, 4), 2)
    assert got.compact == 2


def test_only_articles_due_after_the_readers_last_cut_are_chosen():
    """Published long ago but arrived after the reader's last edition: theirs now."""
    late = item(9, due_hours_ago=1)  # published 9 h ago, due 1 h ago
    got = select_for([*ITEMS, late], frozenset(), set(), set(), 10, since=NOW - timedelta(hours=2))
    assert got.article_ids == (1, 9)


def test_given_back_articles_join_the_selection_newest_published_first():
    back = item(3)
    got = select_for(ITEMS, frozenset({99}), set(), set(), 10, returned=[back])
    assert got.article_ids == (3,)
    got = select_for(ITEMS, frozenset({10}), set(), set(), 10, returned=[item(2)])
    assert got.article_ids == (1, 2, 3)


def test_a_story_reaching_the_reader_twice_in_one_edition_goes_once():
    twin = item(5, url="https://www.example.org/1/")  # the same page as item 1
    got = select_for([item(1), twin], frozenset(), set(), set(), 10)
    assert got.article_ids == (1,)


def test_nothing_new_is_an_empty_selection():
    assert select_for(ITEMS, frozenset({99}), set(), set(), 10).article_ids == ()


def test_readers_with_the_same_articles_share_a_variant():
    selections = {
        100: Selection((1, 2), 2),
        101: Selection((1, 2), 2),
        102: Selection((2,), 1),
        103: Selection((), 0),
        104: Selection((1, 2), 1),  # same list but the second compact: a different body
    }
    groups = group_variants(selections)
    assert sorted(groups.values()) == [[100, 101], [102], [104]]
    assert groups[Selection((1, 2), 2).key] == [100, 101]


def test_variant_key_depends_on_article_order():
    assert Selection((1, 2), 2).key != Selection((2, 1), 2).key


def test_send_ranges_cover_every_id_once_in_chunks():
    ids = [3, 4, 5, 9, 10, 11, 12]
    assert chunk_ranges(ids, 3) == [(3, 5), (9, 11), (12, 12)]
    assert chunk_ranges([], 3) == []


def test_retry_backoff_doubles_and_is_capped():
    assert [backoff(n, 60).total_seconds() for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert backoff(30, 60) == timedelta(hours=12)
