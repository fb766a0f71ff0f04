"""What each reader gets: articles as the templates see them, readers, and the choice rule.

`select_for` is the rule for one reader (due after their last cut, their
topics, nothing they have or have coming, each story once, newest first);
`plan.Plan` applies it to a chunk of readers at once. Readers with the same
selection share one variant (`group_variants`, `Selection.key`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.canonical import dedupe_key
from mailer.models import Article, ArticleTopic, Topic


@dataclass
class Item:
    """An article as the templates see it."""

    id: int
    url: str
    title: str
    summary: str
    image_url: str | None
    author: str | None
    published_at: datetime
    topic_ids: frozenset[int]
    topics: tuple[str, ...] = ()
    # When it became due (`Article.due_at`): compared with each reader's last cut.
    due_at: datetime | None = None

    @cached_property
    def url_key(self) -> str:
        """The story under any spelling of its link, as stored in `Article.story`."""
        return dedupe_key(self.url)[:2000]


@dataclass(frozen=True)
class Reader:
    subscription_id: int
    email: str
    topic_ids: frozenset[int]
    # Their latest (re)activation: a fresh start begins at the cut before it.
    confirmed_at: datetime | None = None


@dataclass(frozen=True)
class Selection:
    """A reader's articles, newest first: the first `full` with summary and image,
    the rest listed by title and link. Every one of them counts as delivered."""

    article_ids: tuple[int, ...]
    full: int

    @property
    def compact(self) -> int:
        return len(self.article_ids) - self.full

    @cached_property
    def key(self) -> str:
        """Asked once per reader in prepare; readers share a few selections."""
        raw = ",".join(map(str, self.article_ids)) + f"|{self.full}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


def newest_first(item: Item) -> tuple[datetime, int]:
    return item.published_at, item.id


def select_for(
    items: Sequence[Item],
    reader_topics: frozenset[int],
    sent_ids: set[int],
    sent_urls: set[str],
    cap: int,
    *,
    since: datetime | None = None,
    returned: Sequence[Item] = (),
) -> Selection:
    """The reader's articles: due after `since` and matching their topics (none
    chosen = all), plus what a given-up delivery handed back; none they have or
    have coming (by id or URL), each story once, newest published first.

    `items` are newest first. The first `cap` are shown in full, the rest compactly.
    """
    chosen = [
        item
        for item in items
        if (since is None or (item.due_at is not None and item.due_at > since))
        and (not reader_topics or item.topic_ids & reader_topics)
        and item.id not in sent_ids
    ]
    if returned:
        have = {item.id for item in chosen}
        chosen.extend(i for i in returned if i.id not in have and i.id not in sent_ids)
        chosen.sort(key=newest_first, reverse=True)
    seen = set(sent_urls)
    ids: list[int] = []
    for item in chosen:
        if item.url_key in seen:
            continue
        seen.add(item.url_key)
        ids.append(item.id)
    return Selection(tuple(ids), min(max(1, cap), len(ids)))


def group_variants(selections: dict[int, Selection]) -> dict[str, list[int]]:
    """Subscription ids by variant key; readers with nothing new are left out."""
    groups: dict[str, list[int]] = defaultdict(list)
    for sub_id, selection in selections.items():
        if selection.article_ids:
            groups[selection.key].append(sub_id)
    return dict(groups)


def load_items(session: Session, newsletter_id: int, *where: Any) -> list[Item]:
    """The newsletter's articles that editions may carry (not excluded), newest
    published first, with their topics."""
    articles = session.scalars(
        select(Article)
        .where(Article.newsletter_id == newsletter_id, Article.excluded_at.is_(None), *where)
        .order_by(Article.published_at.desc(), Article.id.desc())
    ).all()
    topics: dict[int, list[tuple[int, str]]] = defaultdict(list)
    ids = [a.id for a in articles]
    for i in range(0, len(ids), 5000):
        for article_id, topic_id, name in session.execute(
            select(ArticleTopic.article_id, Topic.id, Topic.name)
            .join(Topic, Topic.id == ArticleTopic.topic_id)
            .where(ArticleTopic.article_id.in_(ids[i : i + 5000]))
            .order_by(Topic.name)
        ):
            topics[article_id].append((topic_id, name))
    return [
        Item(
            id=a.id,
            url=a.url,
            title=a.title,
            summary=a.summary or "",
            image_url=a.image_url,
            author=a.author,
            published_at=a.published_at,
            topic_ids=frozenset(t for t, _ in topics[a.id]),
            topics=tuple(n for _, n in topics[a.id]),
            due_at=a.due_at,
        )
        for a in articles
    ]


def due_items(
    session: Session, newsletter_id: int, after: datetime | None, upto: datetime
) -> list[Item]:
    """Articles that became due in (after, upto], newest published first."""
    where = [Article.due_at.is_not(None), Article.due_at <= upto]
    if after is not None:
        where.append(Article.due_at > after)
    return load_items(session, newsletter_id, *where)
