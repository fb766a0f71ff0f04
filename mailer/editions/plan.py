"""One cut's choice for its readers, set-based: the editions' history asked once per chunk.

Each reader gets what became due after their own last cut (of any frequency)
up to this one, whatever its published date: consecutive cuts never overlap
and never leave a gap, for a reader who switches frequency too.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.db import among, is_postgres
from mailer.editions.reservations import UNRETURNED, Reservations, already_sent, reservations_for
from mailer.editions.schedule import PERIOD
from mailer.editions.selection import (
    Item,
    Reader,
    Selection,
    due_items,
    load_items,
    newest_first,
    select_for,
)
from mailer.models import Article, Delivery, Digest, Frequency, VariantArticle


@dataclass
class Choice:
    """What one chunk of readers gets, and the given-up deliveries it took back."""

    selections: dict[int, Selection]
    since: dict[int, datetime]
    returned_deliveries: list[int]


class Plan:
    """What one cut of a (newsletter, frequency) owes its readers, set-based.

    A reader's articles are those that became due after their own last cut
    (the latest edition, of any frequency, that has a delivery row for them,
    or the cut before their latest opt-in, whichever is later) up to this cut
    and match their topics then; plus what their given-up deliveries hand
    back; minus anything they already have or have coming. Readers share
    their last cut: the articles are loaded once per distinct cut, the
    editions' history asked once per chunk of readers, never per reader.
    """

    def __init__(
        self,
        session: Session,
        newsletter_id: int,
        frequency: Frequency,
        cut: datetime,
        exclude_digest: int | None,
    ) -> None:
        self.session = session
        self.newsletter_id = newsletter_id
        self.frequency = frequency
        self.cut = cut
        self.exclude_digest = exclude_digest
        self.postgres = is_postgres(session)
        query = select(Digest.id, Digest.frequency, Digest.cut_at).where(
            Digest.newsletter_id == newsletter_id,
            Digest.cut_at.is_not(None),
            Digest.cut_at <= cut,
        )
        if exclude_digest is not None:
            query = query.where(Digest.id != exclude_digest)
        cuts: dict[Frequency, list[datetime]] = defaultdict(list)
        editions: list[tuple[int, datetime]] = []
        for digest_id, freq, at in session.execute(query.order_by(Digest.cut_at)):
            assert at is not None  # asked for
            cuts[Frequency(freq)].append(at)
            editions.append((digest_id, at))
        self.cuts = dict(cuts)
        # Where every reader who was active lately has a row: the latest edition of
        # each frequency and everything cut since the earlier of the two.
        latest = [c[-1] for c in self.cuts.values()]
        floor = min(latest) if latest else cut
        self.recent = {d: at for d, at in editions if at >= floor}
        self.older = len(self.recent) < len(editions)
        self.start = self.fresh_start(cut)
        self.items: list[Item] = []
        self.loaded_after: datetime | None = cut
        self.by_id: dict[int, Item] = {}
        self.held = Reservations()

    def fresh_start(self, at: datetime) -> datetime:
        """Where a reader starting at `at` begins: the cut of their frequency before
        it (what today's window would give them), or one period back."""
        cuts = self.cuts.get(self.frequency, [])
        i = bisect.bisect_right(cuts, at)
        return cuts[i - 1] if i else self.cut - PERIOD[self.frequency]

    def _last_cuts(self, readers: Sequence[Reader]) -> dict[int, datetime]:
        lo, hi = readers[0].subscription_id, readers[-1].subscription_id
        last: dict[int, datetime] = {}
        if self.recent:
            for sid, digest_id in self.session.execute(
                select(Delivery.subscription_id, Delivery.digest_id).where(
                    Delivery.digest_id.in_(list(self.recent)),
                    Delivery.subscription_id.between(lo, hi),
                )
            ):
                at = self.recent[digest_id]
                if sid not in last or at > last[sid]:
                    last[sid] = at
        missing = [r.subscription_id for r in readers if r.subscription_id not in last]
        if missing and self.older:
            # Readers in none of the recent editions: their own latest, if any.
            query = (
                select(Delivery.subscription_id, func.max(Digest.cut_at))
                .join(Digest, Digest.id == Delivery.digest_id)
                .where(
                    among(Delivery.subscription_id, missing, self.postgres),
                    Digest.newsletter_id == self.newsletter_id,
                    Digest.cut_at.is_not(None),
                    Digest.cut_at <= self.cut,
                )
                .group_by(Delivery.subscription_id)
            )
            if self.exclude_digest is not None:
                query = query.where(Digest.id != self.exclude_digest)
            for sid, latest in self.session.execute(query):
                if latest is not None:
                    last[sid] = latest
        return last

    def since(self, readers: Sequence[Reader]) -> dict[int, datetime]:
        """Each reader's own last cut: what became due after it is theirs now."""
        last = self._last_cuts(readers)
        out: dict[int, datetime] = {}
        for r in readers:
            best = last.get(r.subscription_id)
            if r.confirmed_at is not None:
                fresh = self.fresh_start(r.confirmed_at)
                if best is None or fresh > best:
                    best = fresh
            out[r.subscription_id] = self.start if best is None else best
        return out

    def _returned(self, readers: Sequence[Reader]) -> tuple[dict[int, set[int]], list[int]]:
        """Articles of given-up deliveries (failed, cancelled, skipped at send) not
        yet taken back, per reader; a reader who opted in again since starts afresh."""
        lo, hi = readers[0].subscription_id, readers[-1].subscription_id
        confirmed = {r.subscription_id: r.confirmed_at for r in readers}
        out: dict[int, set[int]] = defaultdict(set)
        deliveries: set[int] = set()
        for delivery_id, sid, at, article_id in self.session.execute(
            select(Delivery.id, Delivery.subscription_id, Digest.cut_at, VariantArticle.article_id)
            .join(Digest, Digest.id == Delivery.digest_id)
            .join(VariantArticle, VariantArticle.variant_id == Delivery.variant_id)
            .where(
                Delivery.subscription_id.between(lo, hi),
                UNRETURNED,
                Digest.newsletter_id == self.newsletter_id,
            )
        ):
            if sid not in confirmed:
                continue  # not this edition's reader: their own edition takes it back
            deliveries.add(delivery_id)
            start = confirmed[sid]
            if start is None or at is None or at >= start:
                out[sid].add(article_id)
        return dict(out), sorted(deliveries)

    def _load(self, after: datetime | None, upto: datetime | None, ids: Iterable[int] = ()) -> None:
        if ids:
            wanted = [i for i in ids if i not in self.by_id]
            found = load_items(self.session, self.newsletter_id, Article.id.in_(wanted))
        else:
            assert upto is not None
            found = due_items(self.session, self.newsletter_id, after, upto)
        fresh = [i for i in found if i.id not in self.by_id]
        if not fresh:
            return
        for item in fresh:
            self.by_id[item.id] = item
        self.held = self.held.merged(
            reservations_for(self.session, self.newsletter_id, fresh, self.exclude_digest)
        )

    def ensure(self, since: datetime) -> None:
        """Every article due in (since, cut] is loaded."""
        if self.loaded_after is not None and since < self.loaded_after:
            self._load(since, self.loaded_after)
            self.loaded_after = since
            self.items = sorted(
                (i for i in self.by_id.values() if i.due_at is not None and i.due_at > since),
                key=newest_first,
                reverse=True,
            )

    def choose(self, readers: Sequence[Reader], cap: int) -> Choice:
        """Every reader's selection; readers with no history and the same last cut
        and topics share one."""
        since = self.since(readers)
        self.ensure(min(since.values()))
        returned, deliveries = self._returned(readers)
        if returned:
            self._load(None, None, {a for ids in returned.values() for a in ids})
        lo, hi = readers[0].subscription_id, readers[-1].subscription_id
        sent = already_sent(self.session, self.held, between=(lo, hi))
        # Articles due up to the cut; given-back ones come per reader.
        pool = self.items
        fresh: dict[tuple[datetime, frozenset[int]], Selection] = {}
        out: dict[int, Selection] = {}
        for reader in readers:
            sid = reader.subscription_id
            got = sent.get(sid)
            back = returned.get(sid)
            start = since[sid]
            if got is None and not back:
                key = (start, reader.topic_ids)
                chosen = fresh.get(key)
                if chosen is None:
                    chosen = fresh[key] = select_for(
                        pool, reader.topic_ids, set(), set(), cap, since=start
                    )
            else:
                ids, urls = got if got is not None else (set(), set())
                extra = sorted(
                    (self.by_id[a] for a in back or () if a in self.by_id),
                    key=newest_first,
                    reverse=True,
                )
                chosen = select_for(
                    pool, reader.topic_ids, ids, urls, cap, since=start, returned=extra
                )
            out[sid] = chosen
        return Choice(out, since, deliveries)
