"""Preparing an edition: cut it, choose for every reader, render once per variant, write every row.

Readers are grouped by the exact list of articles they get: each group is one
`DigestVariant`, rendered and inlined once, so the per-reader work at send
time is string substitution only. Readers are read in keyset chunks (one
chunk's memory, not the list's) and each chunk's delivery rows go in as one
statement on PostgreSQL (arrays through unnest). Safe to run twice: the
edition row is locked and one prepare per newsletter runs at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.content import articles
from mailer.db import conflict_insert, is_postgres
from mailer.editions.close import counts
from mailer.editions.errors import DigestError
from mailer.editions.plan import Plan
from mailer.editions.render import render_selection
from mailer.editions.reservations import mark_returned
from mailer.editions.selection import Item, Reader, Selection
from mailer.mail.links import Links
from mailer.mail.messages import Slots
from mailer.mail.rendering import EmailRenderer
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestVariant,
    EditionStatus,
    Frequency,
    Newsletter,
    Status,
    Subscriber,
    Subscription,
    SubscriptionTopic,
    VariantArticle,
    utcnow,
)
from mailer.readers import suppressions
from mailer.readers.addresses import address_hash


@dataclass
class Prepared:
    digest_id: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    queued: int = 0
    skipped: int = 0
    variants: int = 0
    already: bool = False


def open_ranges(session: Session, digest_id: int, size: int) -> list[tuple[int, int]]:
    """Id ranges of about `size` queued rows each: one send task per range.

    Grouped in SQL, so a 100,000-row edition sends back 500 pairs, not its ids.
    """
    size = max(1, size)
    numbered = (
        select(
            Delivery.id.label("id"),
            ((func.row_number().over(order_by=Delivery.id) - 1) // size).label("chunk"),
        )
        .where(Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.QUEUED)
        .subquery()
    )
    rows = session.execute(
        select(func.min(numbered.c.id), func.max(numbered.c.id))
        .group_by(numbered.c.chunk)
        .order_by(numbered.c.chunk)
    ).all()
    return [(int(lo), int(hi)) for lo, hi in rows]


def chunk_ranges(ids: Sequence[int], size: int) -> list[tuple[int, int]]:
    size = max(1, size)
    return [(ids[i], ids[min(i + size, len(ids)) - 1]) for i in range(0, len(ids), size)]


# PostgreSQL advisory lock namespace for one newsletter's prepares (see serialise_prepares).
PREPARE_LOCK = 17_002


def serialise_prepares(session: Session, newsletter_id: int) -> None:
    """One prepare per newsletter at a time (to the end of its transaction): a
    reader switching frequency between a daily and a weekly edition prepared at
    once would otherwise be chosen by each without seeing the other's rows.
    SQLite's single writer already does this."""
    if is_postgres(session):
        session.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :nl)"),
            {"ns": PREPARE_LOCK, "nl": newsletter_id},
        )


def _lock_digest(session: Session, digest_id: int) -> Digest:
    query = select(Digest).where(Digest.id == digest_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    digest = session.scalars(query).one_or_none()
    if digest is None:
        raise DigestError(f"There is no edition {digest_id}.")
    return digest


def prepare(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    digest_id: int,
    now: datetime | None = None,
) -> Prepared:
    """Choose, group, render once per variant and write every delivery row.

    Safe to run twice (a redelivered task): the edition row is locked and a
    prepared edition only reports its open ranges again.
    """
    now = now or utcnow()
    digest = _lock_digest(session, digest_id)
    result = Prepared(digest_id)
    if digest.status is not EditionStatus.CREATED:
        result.already = True
        result.ranges = open_ranges(session, digest_id, settings.send_batch_size)
        return result
    nl = session.get_one(Newsletter, digest.newsletter_id)
    serialise_prepares(session, nl.id)
    # The cut: after it, an arrival waits for the next edition (articles.edition_cut).
    cut = articles.edition_cut(session, nl.id)
    session.refresh(digest)
    if digest.status != "created":  # prepared meanwhile (SQLite takes no row lock)
        result.already = True
        result.ranges = open_ranges(session, digest_id, settings.send_batch_size)
        return result
    digest.cut_at = cut
    plan = Plan(session, nl.id, digest.frequency, cut, exclude_digest=digest.id)
    links = Links.from_settings(settings)
    variant_ids: dict[str, int] = {}

    def variant_for(selection: Selection) -> int:
        key = selection.key
        if key not in variant_ids:
            variant_ids[key] = _make_variant(
                session, settings, renderer, nl, digest, plan.by_id, selection, key, links
            )
        return variant_ids[key]

    for readers in reader_chunks(session, nl.id, digest.frequency, PREPARE_CHUNK):
        queued, skipped = _prepare_chunk(
            session, settings, digest.id, plan, readers, variant_for, now
        )
        result.queued += queued
        result.skipped += skipped
    result.variants = len(variant_ids)
    digest.status = EditionStatus.SENDING
    digest.prepared_at = now
    session.flush()
    if is_postgres(session) and result.queued + result.skipped >= ANALYZE_AFTER:
        # The planner's row counts predate the rows just written: it took
        # `digest_id = N` for a few rows and scanned the whole edition's index
        # entries in every 200-row claim (O(N) each, ~3 ms at 100,000). Fresh
        # statistics before the first claim keep claims on the primary key.
        session.execute(text("ANALYZE delivery"))
    result.ranges = open_ranges(session, digest.id, settings.send_batch_size)
    digest.counts = counts(session, digest.id)
    session.flush()
    return result


# Readers handled per step of prepare: its memory is one chunk, not the list.
PREPARE_CHUNK = 5000
# An edition this big refreshes the delivery table's statistics once prepared.
ANALYZE_AFTER = 5000


def reader_chunks(
    session: Session, newsletter_id: int, frequency: Frequency, size: int
) -> Iterable[list[Reader]]:
    """Active readers in subscription-id order, `size` at a time (keyset pages)."""
    after = 0
    while True:
        rows = session.execute(
            select(Subscription.id, Subscriber.email, Subscription.confirmed_at)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(
                Subscription.newsletter_id == newsletter_id,
                Subscription.frequency == frequency,
                Subscription.status == Status.ACTIVE,
                Subscription.id > after,
            )
            .order_by(Subscription.id)
            .limit(size)
        ).all()
        if not rows:
            return
        lo, hi = rows[0][0], rows[-1][0]
        topics: dict[int, set[int]] = defaultdict(set)
        for sub_id, topic_id in session.execute(
            select(SubscriptionTopic.subscription_id, SubscriptionTopic.topic_id).where(
                SubscriptionTopic.subscription_id.between(lo, hi)
            )
        ):
            topics[sub_id].add(topic_id)
        # Equal topic sets share one frozenset: a 100,000-reader edition has a few.
        shared: dict[frozenset[int], frozenset[int]] = {}
        yield [
            Reader(
                sid,
                email,
                shared.setdefault(frozenset(topics[sid]), frozenset(topics[sid])),
                confirmed,
            )
            for sid, email, confirmed in rows
        ]
        after = hi


def _make_variant(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    nl: Newsletter,
    digest: Digest,
    by_id: dict[int, Item],
    selection: Selection,
    key: str,
    links: Links,
) -> int:
    """Render one article list once, store it with its markers' nonce, and return its id."""
    slots = Slots.fresh()
    rendered = render_selection(
        session,
        settings,
        renderer,
        nl,
        by_id,
        selection,
        f"{links.digest(digest.id)}?v={key}",
        window_end=digest.window_end,
        frequency=digest.frequency,
        slots=slots,
    )
    session.execute(
        conflict_insert(session, DigestVariant)
        .values(
            digest_id=digest.id,
            key=key,
            article_ids=list(selection.article_ids),
            subject=rendered.subject[:998],
            html=rendered.html,
            text=rendered.text,
            slots=slots.nonce,
        )
        .on_conflict_do_nothing(index_elements=["digest_id", "key"])
    )
    variant_id = int(
        session.scalars(
            select(DigestVariant.id).where(
                DigestVariant.digest_id == digest.id, DigestVariant.key == key
            )
        ).one()
    )
    session.execute(
        conflict_insert(session, VariantArticle).on_conflict_do_nothing(),
        [{"variant_id": variant_id, "article_id": a} for a in selection.article_ids],
    )
    return variant_id


def _prepare_chunk(
    session: Session,
    settings: Settings,
    digest_id: int,
    plan: Plan,
    readers: Sequence[Reader],
    variant_for: Any,
    now: datetime,
) -> tuple[int, int]:
    """Choose for one chunk of readers and write its delivery rows; (queued, skipped)."""
    hashes = {r.subscription_id: address_hash(r.email) for r in readers}
    blocked = suppressions.suppressed(session, hashes.values())
    choice = plan.choose(readers, settings.digest_max_articles)
    sub_ids: list[int] = []
    variants: list[int | None] = []
    states: list[str] = []
    replies: list[str | None] = []
    for reader in readers:
        sid = reader.subscription_id
        sub_ids.append(sid)
        chosen = choice.selections[sid]
        if hashes[sid] in blocked:
            variants.append(None)
            states.append(DeliveryStatus.SKIPPED.value)
            replies.append("suppressed")
            continue
        if not chosen.article_ids:
            variants.append(None)
            states.append(DeliveryStatus.SKIPPED.value)
            replies.append("nothing new")
            continue
        variants.append(variant_for(chosen))
        states.append(DeliveryStatus.QUEUED.value)
        replies.append(None)
    _insert_deliveries(session, digest_id, sub_ids, variants, states, replies, now)
    mark_returned(session, choice.returned_deliveries)
    queued = sum(1 for state in states if state == DeliveryStatus.QUEUED.value)
    return queued, len(states) - queued


def _insert_deliveries(
    session: Session,
    digest_id: int,
    sub_ids: list[int],
    variants: list[int | None],
    states: list[str],
    replies: list[str | None],
    now: datetime,
) -> None:
    """The chunk's rows in one statement on PostgreSQL (arrays through unnest).

    The ORM's bulk insert sent them one parameter set at a time: 3 s of a
    10,000-reader prepare. `ON CONFLICT DO NOTHING` keeps a second prepare
    from making a second row per (edition, subscription).
    """
    if not sub_ids:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text(
                "INSERT INTO delivery (digest_id, subscription_id, variant_id, status, "
                "smtp_reply, attempts, updated_at) "
                "SELECT :digest_id, t.sid, t.vid, t.status, t.reply, 0, :now "
                "FROM unnest(CAST(:sids AS integer[]), CAST(:vids AS integer[]), "
                "CAST(:states AS varchar[]), CAST(:replies AS text[])) "
                "AS t(sid, vid, status, reply) "
                "ON CONFLICT (digest_id, subscription_id) DO NOTHING"
            ),
            {
                "digest_id": digest_id,
                "now": now,
                "sids": sub_ids,
                "vids": variants,
                "states": states,
                "replies": replies,
            },
        )
        return
    rows = [
        {
            "digest_id": digest_id,
            "subscription_id": sid,
            "variant_id": vid,
            "status": DeliveryStatus(state),
            "smtp_reply": reply,
            "attempts": 0,
            "updated_at": now,
        }
        for sid, vid, state, reply in zip(sub_ids, variants, states, replies, strict=True)
    ]
    for i in range(0, len(rows), 1000):
        session.execute(
            conflict_insert(session, Delivery).on_conflict_do_nothing(
                index_elements=["digest_id", "subscription_id"]
            ),
            rows[i : i + 1000],
        )
