"""Which articles a reader already holds: reservations made by delivery rows, and given-back ones.

A delivery reserves its variant's articles for its reader from the moment it
is written (a reservation, not a receipt); one that finally fails, is skipped
at send time or is cancelled before it went gives them back
(`Delivery.released`), to that reader's next edition (`Delivery.returned`
once taken). Nothing is written per reader per article: who holds an article
is found from the few variants that carry it (`VariantArticle`) and those
variants' deliveries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.orm import Session

from mailer.editions.selection import Item
from mailer.models import Article, Delivery, DigestVariant, VariantArticle


def holding() -> Any:
    """Deliveries that hold their variant's articles for their reader."""
    return and_(Delivery.variant_id.is_not(None), Delivery.released.is_(False))


# Spelled as the partial index ix_delivery_unreturned is, so both databases use it.
UNRETURNED = text("delivery.released AND NOT delivery.returned")


@dataclass(frozen=True)
class Reservations:
    """The variants of other editions that carry any of a set of articles, by id
    or by URL, with those articles: all a reader's history that can matter here."""

    digest_ids: tuple[int, ...] = ()
    variants: dict[int, tuple[frozenset[int], frozenset[str]]] = field(default_factory=dict)

    def merged(self, other: Reservations) -> Reservations:
        variants = dict(self.variants)
        for vid, (ids, urls) in other.variants.items():
            had = variants.get(vid, (frozenset(), frozenset()))
            variants[vid] = (had[0] | ids, had[1] | urls)
        return Reservations(tuple(sorted({*self.digest_ids, *other.digest_ids})), variants)


def reservations_for(
    session: Session, newsletter_id: int, items: Sequence[Item], exclude_digest: int | None
) -> Reservations:
    if not items:
        return Reservations()
    query = (
        select(VariantArticle.variant_id, DigestVariant.digest_id, Article.id, Article.story)
        .join(DigestVariant, DigestVariant.id == VariantArticle.variant_id)
        .join(Article, Article.id == VariantArticle.article_id)
        .where(
            Article.newsletter_id == newsletter_id,
            or_(
                Article.id.in_([i.id for i in items]),
                Article.story.in_(sorted({i.url_key for i in items})),
            ),
        )
    )
    if exclude_digest is not None:
        query = query.where(DigestVariant.digest_id != exclude_digest)
    digest_ids: set[int] = set()
    found: dict[int, tuple[set[int], set[str]]] = defaultdict(lambda: (set(), set()))
    for variant_id, digest_id, article_id, story in session.execute(query):
        digest_ids.add(digest_id)
        found[variant_id][0].add(article_id)
        found[variant_id][1].add(story)
    return Reservations(
        tuple(sorted(digest_ids)),
        {v: (frozenset(ids), frozenset(urls)) for v, (ids, urls) in found.items()},
    )


def already_sent(
    session: Session, reservations: Reservations, between: tuple[int, int]
) -> dict[int, tuple[set[int], set[str]]]:
    """Per subscription in `between`, which of the articles (by id or by URL) it
    already got or has coming. No earlier variant carries them: no query at all."""
    out: dict[int, tuple[set[int], set[str]]] = {}
    if not reservations.variants:
        return out
    rows = session.execute(
        select(Delivery.subscription_id, Delivery.variant_id).where(
            Delivery.digest_id.in_(reservations.digest_ids),
            Delivery.subscription_id.between(*between),
            Delivery.variant_id.in_(list(reservations.variants)),
            holding(),
        )
    )
    for sub_id, variant_id in rows:
        assert variant_id is not None  # asked for by id
        ids, urls = reservations.variants[variant_id]
        got_ids, got_urls = out.setdefault(sub_id, (set(), set()))
        got_ids |= ids
        got_urls |= urls
    return out


def reserved_articles(session: Session, digest_id: int | None = None) -> set[tuple[int, int]]:
    """(subscription, article) pairs held by deliveries, of one edition or all."""
    query = (
        select(Delivery.subscription_id, VariantArticle.article_id)
        .join(VariantArticle, VariantArticle.variant_id == Delivery.variant_id)
        .where(holding())
    )
    if digest_id is not None:
        query = query.where(Delivery.digest_id == digest_id)
    return {(sub_id, article_id) for sub_id, article_id in session.execute(query)}


def mark_returned(session: Session, delivery_ids: Sequence[int]) -> None:
    """Given-up deliveries whose articles an edition took back: never again."""
    for i in range(0, len(delivery_ids), 1000):
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids[i : i + 1000]))
            .values(returned=True)
            .execution_options(synchronize_session=False)
        )
