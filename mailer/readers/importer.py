"""Subscriber import from CSV: streamed, chunked, idempotent, and fast.

The file is read row by row with the csv module (never all at once) and
written in chunks, each its own transaction: a crash leaves only whole
chunks behind, and running the same file again is safe because a reader who
is already there is counted as such and left alone.

Speed comes from doing per chunk what `subscriptions.subscribe` does per row:
one suppression lookup, one `INSERT … ON CONFLICT DO NOTHING` each for
subscribers and subscriptions, and bulk rows for topics, audit events and
confirm notices (on PostgreSQL all of it one statement for the chunk's new
addresses, with two chunks written at once; see `Importer.run`), and from
checking each distinct domain once and splitting an everyday address at its
@ directly (`addresses.CachedNormaliser`). The
rules are not copied: addresses go through
`addresses.normalise`, topics through `newsletters.resolve_topics`,
frequency through `newsletters.parse_frequency`, suppression through
`suppressions.suppressed` (or its SQL spelling, `suppressed_among_sql`),
and any row that is not a plain "new" or "already active" case (a pending
reader being confirmed by the import) is handed to `subscriptions.subscribe`
itself.

Two deliberate differences from the reader's own subscribe:
- a reader who unsubscribed, complained or bounced is not subscribed again
  by an import (an old list must not override a reader's choice); the row
  goes to the reject file saying so;
- a reader already pending is not sent another confirm mail, so re-running
  an import never mails anyone twice.

Why one module of this size: it is one pipeline (read, normalise, chunk,
write) and its two stores (the portable SQLAlchemy writer and the
PostgreSQL one-statement writer) must take the same rows to the same
result. Keeping them side by side is what lets a reader check that they
agree; the pieces have no other caller.
"""

from __future__ import annotations

import csv
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

from sqlalchemy import Table, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from mailer.models import (
    Frequency,
    Newsletter,
    NoticeStatus,
    Notification,
    Status,
    Subscriber,
    Subscription,
    SubscriptionEvent,
    SubscriptionTopic,
    utcnow,
)
from mailer.readers import newsletters, spreadsheet, suppressions
from mailer.readers import subscriptions as subs
from mailer.readers.addresses import CachedNormaliser, InvalidAddress, address_hash

CHUNK = 2000
WRITERS = 2  # chunks in flight on PostgreSQL, each on its own connection (see Importer.run)
KEEP_LINES = 100  # invalid line numbers kept in the report; the reject file has them all
TOPIC_SEPARATORS = (";", "|")


class ImportFileError(ValueError):
    """The file as a whole can't be imported; nothing was changed."""


@dataclass
class ImportReport:
    added: int = 0
    already: int = 0
    invalid: int = 0
    suppressed: int = 0
    ended: int = 0
    confirmed: int = 0
    rows: int = 0
    chunks: int = 0
    invalid_lines: list[int] = field(default_factory=list)
    rejects_path: Path | None = None

    def merge(self, chunk: ImportReport) -> None:
        """Add a committed chunk's counts (the writers count apart; this runs in file order)."""
        self.added += chunk.added
        self.already += chunk.already
        self.suppressed += chunk.suppressed
        self.ended += chunk.ended
        self.confirmed += chunk.confirmed
        self.chunks += chunk.chunks


@dataclass(frozen=True)
class Refused:
    """Why a row can't be imported (a class, not a str: Frequency is a str too)."""

    reason: str


@dataclass(slots=True)  # not frozen: frozen's __init__ was 1.3 us of each row's ~15
class _Row:
    line: int
    raw: list[str]
    email: str
    key: str
    hash: str
    frequency: Frequency
    topic_ids: tuple[int, ...]
    topic_names: tuple[str, ...]


def rejects_path_for(path: Path) -> Path:
    return path.with_name(f"{path.stem}.rejects.csv")


def consent_source(path: Path) -> str:
    return f"import:{path.name}"[:64]


def _lines(binary: IO[bytes], read: list[int]) -> Iterator[str]:
    """Decoded lines, counting bytes for the progress bar; bad bytes become U+FFFD."""
    first = True
    for raw in binary:
        read[0] += len(raw)
        line = raw.decode("utf-8", errors="replace")
        if first:
            line, first = line.removeprefix("\ufeff"), False
        yield line


def _readable(reader: Any) -> Iterator[list[str] | csv.Error]:
    """The CSV rows, with a line the csv module refuses (a field over its 128 KiB
    limit, say) handed on as its error, so it is refused on record and the
    import goes on with the next line instead of stopping with a traceback."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield exc


def split_topics(value: str) -> list[str]:
    for sep in TOPIC_SEPARATORS[1:]:
        value = value.replace(sep, TOPIC_SEPARATORS[0])
    return [t.strip() for t in value.split(TOPIC_SEPARATORS[0]) if t.strip()]


class _Rejects:
    """The reject file, opened on the first bad row: the original columns plus why."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header = path, header
        self.file: IO[str] | None = None
        self.writer: spreadsheet.Writer | None = None
        self.lock = threading.Lock()

    def write(self, line: int, raw: list[str], reason: str) -> None:
        with self.lock:  # both the parsing and the writing thread reject rows
            if self.writer is None:
                self.file = self.path.open("w", newline="", encoding="utf-8")
                # The rejected cells are whatever the file held: none may run as a formula.
                self.writer = spreadsheet.Writer(self.file)
                self.writer.writerow([*self.header, "line", "reason"])
            # Under the header's own columns, so "line" and "reason" stay in theirs
            # however many cells the row had; cells past the header's go after them.
            width = len(self.header)
            cells = [*raw[:width], *[""] * (width - len(raw))]
            self.writer.writerow([*cells, line, reason, *raw[width:]])

    def flush(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass
class _NewReaders:
    """What `_PostgresStore.new_readers` did in its one statement."""

    blocked: set[str]  # hashes on the suppression list: nothing written for them
    made: dict[str, int | None]  # key of each subscriber inserted -> its new subscription's id
    notes: list[int]  # confirm notices queued for those subscriptions


class _Store:
    """The chunk's writes through SQLAlchemy Core, for SQLite (the embedded default)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def new_readers(
        self,
        rows: list[_Row],
        newsletter_id: int,
        *,
        status: Status,
        source: str,
        confirmed_at: datetime | None,
        notices: bool,
        now: datetime,
    ) -> _NewReaders | None:
        """The whole write for readers not yet in the database, or None: step by step."""
        return None

    def suppressed(self, hashes: list[str]) -> set[str]:
        return suppressions.suppressed(self.session, hashes)

    def subscribers(
        self, pairs: list[tuple[str, str]], newsletter_id: int, now: datetime
    ) -> dict[str, tuple[int, str | None]]:
        """Insert the new addresses; by key, each one's id and its status in this newsletter."""
        table = _table(Subscriber)
        self.session.execute(
            sqlite.insert(table).on_conflict_do_nothing(index_elements=["email_key"]),
            [{"email": e, "email_key": k, "created_at": now} for e, k in pairs],
        )
        rows = self.session.execute(
            select(Subscriber.email_key, Subscriber.id, Subscription.status)
            .outerjoin(
                Subscription,
                (Subscription.subscriber_id == Subscriber.id)
                & (Subscription.newsletter_id == newsletter_id),
            )
            .where(Subscriber.email_key.in_([k for _, k in pairs]))
        )
        return {key: (sid, None if st is None else str(st)) for key, sid, st in rows}

    def subscriptions(
        self,
        newsletter_id: int,
        rows: list[tuple[int, str]],
        *,
        status: Status,
        source: str,
        confirmed_at: datetime | None,
        now: datetime,
    ) -> list[tuple[int, int]]:
        """Insert new subscriptions; (id, subscriber_id) of those actually made."""
        table = _table(Subscription)
        made = self.session.execute(
            sqlite.insert(table)
            .on_conflict_do_nothing(index_elements=["subscriber_id", "newsletter_id"])
            .returning(table.c.id, table.c.subscriber_id),
            [
                {
                    "subscriber_id": sid,
                    "newsletter_id": newsletter_id,
                    "status": status,
                    "frequency": Frequency(freq),
                    "generation": 1,
                    "created_at": now,
                    "status_changed_at": now,
                    "confirmed_at": confirmed_at,
                    "consent_at": confirmed_at,
                    "consent_source": source if confirmed_at else None,
                    "consent_ip": None,
                    "soft_bounces": 0,
                }
                for sid, freq in rows
            ],
        )
        return [(sub_id, sid) for sub_id, sid in made]

    def events(self, sub_ids: list[int], status: Status, source: str, now: datetime) -> None:
        self.session.execute(
            _table(SubscriptionEvent).insert(),
            [
                dict(subscription_id=i, new_status=status.value, at=now, source=source)
                for i in sub_ids
            ],
        )

    def topics(self, pairs: list[tuple[int, int]]) -> None:
        if pairs:
            self.session.execute(
                _table(SubscriptionTopic).insert(),
                [{"subscription_id": s, "topic_id": t} for s, t in pairs],
            )

    def notices(self, sub_ids: list[int], kind: str, now: datetime) -> list[int]:
        table = _table(Notification)
        rows = self.session.execute(
            table.insert().returning(table.c.id),
            [
                dict(
                    subscription_id=i,
                    kind=kind,
                    status=NoticeStatus.QUEUED,
                    attempts=0,
                    created_at=now,
                )
                for i in sub_ids
            ],
        )
        return [note_id for (note_id,) in rows]


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def _T(name: str) -> str:
    return f"string_to_array(:{name}, chr(10))"


def _I(name: str) -> str:
    return f"CAST(string_to_array(:{name}, ',') AS integer[])"


def _texts(values: Iterable[str]) -> str:
    return "\n".join(values)


def _ints(values: Iterable[int]) -> str:
    return ",".join(map(str, values))


class _PostgresStore(_Store):
    """The same writes as one statement per table, columns passed as arrays to unnest().

    A multi-row VALUES list makes a new, long statement for every chunk, which
    the driver has to parse and the server to plan; arrays keep one short
    statement with one parameter per column, about five times faster here.
    Each array travels as one newline- (or comma-) joined string that the
    server splits: the driver's per-element list adaptation in Python was the
    next cost. Newlines can't occur in values that passed `normalise`.
    """

    def _run(self, sql: str, **params: Any) -> Any:
        return self.session.execute(text(sql), params)

    def new_readers(
        self,
        rows: list[_Row],
        newsletter_id: int,
        *,
        status: Status,
        source: str,
        confirmed_at: datetime | None,
        notices: bool,
        now: datetime,
    ) -> _NewReaders:
        """Suppression check, subscriber, subscription, audit event, topics (and confirm
        notices) for the chunk's new addresses as one statement of data-modifying CTEs.

        The same rows as the step-by-step methods write, in file order, but one
        round trip instead of five: the writer thread hands the GIL back and forth
        with the parsing thread at each result, and PostgreSQL sat idle meanwhile.
        Addresses that already have a subscriber row are left alone here (`made`
        doesn't name them) for the caller's step-by-step path.
        """
        # The planner can't see how short these arrays are (it takes unnest to give 100
        # rows a call), prices the joins over jit_above_cost and then spends ~0.4 s
        # compiling for a statement that runs in ~70 ms. For this transaction only.
        self._run("SET LOCAL jit = off")
        notice_cte = (
            ", notice AS (INSERT INTO notification (subscription_id, kind, status, attempts, "
            f"created_at) SELECT id, 'confirm', '{NoticeStatus.QUEUED}', 0, :now FROM made "
            "ORDER BY id RETURNING id) "
            if notices
            else " "
        )
        result = self._run(
            "WITH input AS (SELECT * FROM unnest("
            f"{_T('e')}, {_T('k')}, {_T('h')}, {_T('f')}, {_T('t')}"
            ") WITH ORDINALITY AS t(e, k, h, f, tp, n)), "
            f"blocked AS ({suppressions.suppressed_among_sql(_T('h'))}), "
            "new_subscriber AS (INSERT INTO subscriber (email, email_key, created_at) "
            "SELECT e, k, :now FROM input WHERE h NOT IN (SELECT h FROM blocked) ORDER BY n "
            "ON CONFLICT (email_key) DO NOTHING RETURNING id, email_key), "
            "made AS (INSERT INTO subscription (subscriber_id, newsletter_id, status, frequency, "
            "generation, created_at, status_changed_at, confirmed_at, consent_at, "
            "consent_source, consent_ip, soft_bounces) "
            "SELECT ns.id, :n, :status, i.f, 1, :now, :now, :confirmed, :confirmed, :source, "
            "NULL, 0 FROM new_subscriber ns JOIN input i ON i.k = ns.email_key ORDER BY i.n "
            "ON CONFLICT (subscriber_id, newsletter_id) DO NOTHING "
            "RETURNING id, subscriber_id), "
            "event AS (INSERT INTO subscription_event (subscription_id, old_status, new_status, "
            "at, source, ip, detail) "
            "SELECT id, NULL, :status, :now, :event_source, NULL, NULL FROM made ORDER BY id), "
            "topic AS (INSERT INTO subscription_topic (subscription_id, topic_id) "
            "SELECT m.id, CAST(x AS integer) FROM made m "
            "JOIN new_subscriber ns ON ns.id = m.subscriber_id "
            "JOIN input i ON i.k = ns.email_key "
            "CROSS JOIN unnest(string_to_array(i.tp, ',')) AS x ORDER BY m.id, x)"
            f"{notice_cte}"
            "SELECT 0, h, NULL FROM blocked "
            "UNION ALL SELECT 1, ns.email_key, m.id FROM new_subscriber ns "
            "LEFT JOIN made m ON m.subscriber_id = ns.id"
            + (" UNION ALL SELECT 2, NULL, id FROM notice" if notices else ""),
            e=_texts(r.email for r in rows),
            k=_texts(r.key for r in rows),
            h=_texts(r.hash for r in rows),
            f=_texts(r.frequency.value for r in rows),
            t=_texts(_ints(r.topic_ids) for r in rows),
            n=newsletter_id,
            status=status.value,
            now=now,
            confirmed=confirmed_at,
            source=source if confirmed_at else None,
            event_source=source,
        )
        out = _NewReaders(set(), {}, [])
        for kind, value, number in result:
            if kind == 0:
                out.blocked.add(value)
            elif kind == 1:
                out.made[value] = number
            else:
                out.notes.append(number)
        out.notes.sort()
        return out

    def subscribers(
        self, pairs: list[tuple[str, str]], newsletter_id: int, now: datetime
    ) -> dict[str, tuple[int, str | None]]:
        # New addresses come back from the insert itself; only the others are looked up.
        made = self._run(
            "INSERT INTO subscriber (email, email_key, created_at) "
            f"SELECT e, k, :now FROM unnest({_T('e')}, {_T('k')}) AS t(e, k) "
            "ON CONFLICT (email_key) DO NOTHING RETURNING email_key, id",
            e=_texts(e for e, _ in pairs),
            k=_texts(k for _, k in pairs),
            now=now,
        )
        found: dict[str, tuple[int, str | None]] = {key: (sid, None) for key, sid in made}
        others = [k for _, k in pairs if k not in found]
        if others:
            rows = self._run(
                "SELECT s.email_key, s.id, sub.status FROM subscriber s "
                "LEFT JOIN subscription sub ON sub.subscriber_id = s.id AND sub.newsletter_id = :n "
                f"WHERE s.email_key = ANY({_T('k')})",
                n=newsletter_id,
                k=_texts(others),
            )
            found.update({key: (sid, status) for key, sid, status in rows})
        return found

    def subscriptions(
        self,
        newsletter_id: int,
        rows: list[tuple[int, str]],
        *,
        status: Status,
        source: str,
        confirmed_at: datetime | None,
        now: datetime,
    ) -> list[tuple[int, int]]:
        made = self._run(
            "INSERT INTO subscription (subscriber_id, newsletter_id, status, frequency, "
            "generation, created_at, status_changed_at, confirmed_at, consent_at, "
            "consent_source, consent_ip, soft_bounces) "
            "SELECT s, :n, :status, f, 1, :now, :now, :confirmed, :confirmed, :source, NULL, 0 "
            f"FROM unnest({_I('s')}, {_T('f')}) AS t(s, f) "
            "ON CONFLICT (subscriber_id, newsletter_id) DO NOTHING "
            "RETURNING id, subscriber_id",
            s=_ints(sid for sid, _ in rows),
            f=_texts(freq for _, freq in rows),
            n=newsletter_id,
            status=status.value,
            now=now,
            confirmed=confirmed_at,
            source=source if confirmed_at else None,
        )
        return [(sub_id, sid) for sub_id, sid in made]

    def events(self, sub_ids: list[int], status: Status, source: str, now: datetime) -> None:
        self._run(
            "INSERT INTO subscription_event (subscription_id, old_status, new_status, at, "
            "source, ip, detail) "
            "SELECT i, NULL, :status, :now, :source, NULL, NULL "
            f"FROM unnest({_I('i')}) AS t(i)",
            i=_ints(sub_ids),
            status=status.value,
            now=now,
            source=source,
        )

    def topics(self, pairs: list[tuple[int, int]]) -> None:
        if pairs:
            self._run(
                "INSERT INTO subscription_topic (subscription_id, topic_id) "
                f"SELECT s, t FROM unnest({_I('s')}, {_I('t')}) AS x(s, t)",
                s=_ints(s for s, _ in pairs),
                t=_ints(t for _, t in pairs),
            )

    def notices(self, sub_ids: list[int], kind: str, now: datetime) -> list[int]:
        rows = self._run(
            "INSERT INTO notification (subscription_id, kind, status, attempts, created_at) "
            f"SELECT i, :kind, '{NoticeStatus.QUEUED}', 0, :now FROM unnest({_I('i')}) AS t(i) "
            "RETURNING id",
            i=_ints(sub_ids),
            kind=kind,
            now=now,
        )
        return [note_id for (note_id,) in rows]


class Importer:
    """One import run into one newsletter; `run` drives it over a file."""

    def __init__(
        self,
        session: Session,
        newsletter: Newsletter,
        *,
        source: str,
        confirmed: bool,
        now: datetime | None = None,
    ) -> None:
        self.session = session
        # Plain values: the ORM object belongs to the writer thread's session.
        self.nl_id, self.nl_slug = newsletter.id, newsletter.slug
        self.source, self.confirmed = source, confirmed
        self.now = now or utcnow()
        self.report = ImportReport()
        self.store: _Store = (
            _PostgresStore(session)
            if session.get_bind().dialect.name == "postgresql"
            else _Store(session)
        )
        target = Status.ACTIVE if confirmed else Status.PENDING
        if target not in subs.TRANSITIONS[None]:
            raise RuntimeError(f"the lifecycle no longer allows a new {target} subscription")
        # Parsing runs while the writer thread uses `session`, so it reads through its own.
        self.lookups: Session = session
        # Each distinct cell value is resolved once: a refusal is cached as the exception.
        self._topics: dict[str, tuple[tuple[int, ...], tuple[str, ...]] | Refused] = {}
        self._frequencies: dict[str, Frequency | Refused] = {}
        # Same verdicts as `normalise`; each distinct domain is checked once (see there).
        self.normalise = CachedNormaliser()

    # -- per row: the same rules as subscribe() ------------------------------------------

    def _topics_for(self, value: str) -> tuple[tuple[int, ...], tuple[str, ...]] | Refused:
        if value not in self._topics:
            try:
                nl = self.lookups.get_one(Newsletter, self.nl_id)
                found = newsletters.resolve_topics(self.lookups, nl, split_topics(value))
                self._topics[value] = (tuple(t.id for t in found), tuple(t.slug for t in found))
            except newsletters.SubscriptionError as exc:
                self._topics[value] = Refused(str(exc))
        return self._topics[value]

    def _frequency_for(self, value: str) -> Frequency | Refused:
        if value not in self._frequencies:
            try:
                nl = self.lookups.get_one(Newsletter, self.nl_id)
                self._frequencies[value] = newsletters.parse_frequency(value, nl)
            except newsletters.SubscriptionError as exc:
                self._frequencies[value] = Refused(str(exc))
        return self._frequencies[value]

    def parse(self, line: int, raw: list[str], columns: dict[str, int]) -> _Row | Refused:
        """A row ready to write, or the reason it can't be."""

        def cell(name: str) -> str:
            """The cell's value; one we wrote guarded against formulas (`'-bob@…`) reads back."""
            i = columns.get(name)
            return (
                spreadsheet.read(raw[i].strip()).strip() if i is not None and i < len(raw) else ""
            )

        try:
            address = self.normalise(cell("email"))
        except InvalidAddress as exc:
            return Refused(str(exc))
        topics = self._topics_for(cell("topics"))
        if isinstance(topics, Refused):
            return topics
        frequency = self._frequency_for(cell("frequency"))
        if isinstance(frequency, Refused):
            return frequency
        return _Row(
            line,
            raw,
            address.email,
            address.key,
            address_hash(address.email),
            frequency,
            topics[0],
            topics[1],
        )

    # -- per chunk: bulk writes ----------------------------------------------------------

    def write_chunk(
        self,
        rows: list[_Row],
        reject: Callable[[_Row, str], None],
        store: _Store | None = None,
        report: ImportReport | None = None,
    ) -> list[int]:
        """Write one chunk (no commit); return the confirm notices to send after commit.

        `store` is the writer's own (its session, its transaction) and `report`
        the chunk's own counts, added to the run's in file order once committed.
        """
        store = store or self.store
        report = report if report is not None else self.report
        unique: dict[str, _Row] = {}
        for row in rows:
            if row.key in unique:
                report.already += 1  # the same reader twice in the file
            else:
                unique[row.key] = row
        if not unique:
            return []
        target = Status.ACTIVE if self.confirmed else Status.PENDING
        done = store.new_readers(
            list(unique.values()),
            self.nl_id,
            status=target,
            source=self.source,
            confirmed_at=self.now if self.confirmed else None,
            notices=not self.confirmed,
            now=self.now,
        )
        blocked = done.blocked if done else store.suppressed([r.hash for r in unique.values()])
        for key, row in list(unique.items()):
            if row.hash in blocked:
                report.suppressed += 1
                reject(row, "suppressed: this address asked not to be mailed")
                del unique[key]
        notes: list[int] = []
        if done is not None:
            # New subscribers, written whole; the rest (already in the database) go on below.
            for key, sub_id in done.made.items():
                del unique[key]
                if sub_id is None:  # not for a subscriber just made; counted as below if so
                    report.already += 1
                else:
                    report.added += 1
            notes += done.notes
        if not unique:
            return notes

        found = store.subscribers([(r.email, r.key) for r in unique.values()], self.nl_id, self.now)
        fresh = {found[key][0]: row for key, row in unique.items() if found[key][1] is None}
        notes += self._insert_new(fresh, store, report)
        for key, (_sid, status) in found.items():
            if status is not None:
                notes += self._existing(unique[key], Status(status), reject, store, report)
        return notes

    def _insert_new(self, fresh: dict[int, _Row], store: _Store, report: ImportReport) -> list[int]:
        if not fresh:
            return []
        now = self.now
        target = Status.ACTIVE if self.confirmed else Status.PENDING
        made = store.subscriptions(
            self.nl_id,
            [(sid, row.frequency.value) for sid, row in fresh.items()],
            status=target,
            source=self.source,
            confirmed_at=now if self.confirmed else None,
            now=now,
        )
        # A row the web created between our look-up and insert is not ours to count as new.
        report.already += len(fresh) - len(made)
        report.added += len(made)
        if not made:
            return []
        sub_ids = [sub_id for sub_id, _ in made]
        store.events(sub_ids, target, self.source, now)
        store.topics(
            [(sub_id, topic_id) for sub_id, sid in made for topic_id in fresh[sid].topic_ids]
        )
        return [] if self.confirmed else store.notices(sub_ids, "confirm", now)

    def _existing(
        self,
        row: _Row,
        status: Status,
        reject: Callable[[_Row, str], None],
        store: _Store,
        report: ImportReport,
    ) -> list[int]:
        if status is Status.ACTIVE or (status is Status.PENDING and not self.confirmed):
            report.already += 1
            return []
        if status is Status.PENDING:
            # Rare: confirming a pending reader is exactly subscribe(confirmed=True).
            outcome = subs.subscribe(
                store.session,
                email=row.email,
                newsletter=self.nl_slug,
                topics=row.topic_names,
                frequency=row.frequency.value,
                source=self.source,
                confirmed=True,
                now=self.now,
            )
            report.confirmed += 1
            return outcome.notification_ids
        report.ended += 1
        reject(row, f"{status.value} earlier; only the reader can subscribe again")
        return []

    # -- the whole file --------------------------------------------------------------------

    def run(
        self,
        path: Path,
        *,
        chunk_size: int = CHUNK,
        rejects_path: Path | None = None,
        after_commit: Callable[[list[int]], None] | None = None,
        on_row: Callable[[int], None] | None = None,
        on_chunk: Callable[[ImportReport, int], None] | None = None,
        writers: int | None = None,
    ) -> ImportReport:
        """Import `path`, committing every `chunk_size` rows.

        `after_commit` gets each chunk's confirm-notice ids once they are
        committed (the CLI enqueues them); `on_row` sees each line number
        before its row is processed, and `on_chunk` the report and bytes read
        after each commit, for a progress bar. Both run on the calling thread,
        in file order.

        Parsing and writing overlap: while chunks are written and committed on
        writer threads (the database does most of that work), the next is read
        and validated here. On PostgreSQL two chunks are in flight, each on a
        connection of its own, because one backend inserting and checking
        foreign keys was the slowest stage and the machine has a core to spare
        while this thread waits; SQLite, with one writer at a time, keeps one.
        Two chunks in flight never share an address (a chunk that repeats one
        from the chunk before waits for it), so neither waits for the other's
        locks and every count, reject and stored row is what one writer would
        produce; and a chunk commits only after the one before it has, so a
        crash or an error still leaves the first N chunks whole and no others.
        """
        report, read = self.report, [0]
        rejects_path = rejects_path or rejects_path_for(path)
        if writers is None:
            writers = WRITERS if isinstance(self.store, _PostgresStore) else 1
        with path.open("rb") as binary:
            reader = csv.reader(_lines(binary, read))
            try:
                header = next(reader, None)
            except csv.Error as exc:
                raise ImportFileError(f"The header row can't be read as CSV: {exc}.") from exc
            columns = _columns(header)
            rejects_path.unlink(missing_ok=True)  # a rerun reports afresh
            rejects = _Rejects(rejects_path, list(header or []))
            bind = self.session.get_bind()
            # The first writer uses the caller's session, the others sessions of their own.
            own = [Session(bind=bind) for _ in range(writers - 1)]
            stores = [self.store, *(type(self.store)(s) for s in own)]
            pools = [
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"import-writer-{i}")
                for i in range(writers)
            ]
            in_flight: deque[_InFlight] = deque()
            submitted = 0

            def finish() -> None:
                done = in_flight.popleft()
                notes, delta, at = done.future.result()
                report.merge(delta)
                if notes and after_commit is not None:
                    after_commit(notes)
                if on_chunk is not None:
                    on_chunk(report, at)

            def submit(rows: list[_Row]) -> None:
                nonlocal submitted
                keys = {r.key for r in rows}
                while len(in_flight) >= writers or any(
                    not keys.isdisjoint(f.keys) for f in in_flight
                ):
                    finish()
                before = in_flight[-1].future if in_flight else None
                slot = submitted % writers
                future = pools[slot].submit(
                    self._commit, stores[slot], rows, rejects, read[0], before
                )
                in_flight.append(_InFlight(future, keys))
                submitted += 1

            try:
                with Session(bind=bind) as lookups:
                    self.lookups = lookups
                    pending: list[_Row] = []
                    for raw in _readable(reader):
                        if isinstance(raw, csv.Error):  # e.g. a field over the size limit
                            report.rows += 1
                            report.invalid += 1
                            if len(report.invalid_lines) < KEEP_LINES:
                                report.invalid_lines.append(reader.line_num)
                            rejects.write(reader.line_num, [], f"unreadable CSV: {raw}")
                            continue
                        if not raw or not any(c.strip() for c in raw):
                            continue
                        line = reader.line_num
                        if on_row is not None:
                            on_row(line)
                        report.rows += 1
                        parsed = self.parse(line, raw, columns)
                        if isinstance(parsed, Refused):
                            report.invalid += 1
                            if len(report.invalid_lines) < KEEP_LINES:
                                report.invalid_lines.append(line)
                            rejects.write(line, raw, parsed.reason)
                        else:
                            pending.append(parsed)
                        if len(pending) >= chunk_size:
                            submit(pending)
                            pending = []
                    submit(pending)
                    while in_flight:
                        finish()
            finally:
                # Let chunks in flight end (committed whole, or rolled back) before leaving.
                for pool in pools:
                    pool.shutdown(wait=True)
                for session in own:
                    session.close()
                rejects.close()
        report.rejects_path = rejects_path if rejects.file is not None else None
        return report

    def _commit(
        self,
        store: _Store,
        rows: list[_Row],
        rejects: _Rejects,
        read: int,
        before: Future[tuple[list[int], ImportReport, int]] | None,
    ) -> tuple[list[int], ImportReport, int]:
        """On a writer thread: one chunk, one transaction, committed after `before`'s."""

        def reject(row: _Row, reason: str) -> None:
            rejects.write(row.line, row.raw, reason)

        delta = ImportReport()
        session = store.session
        try:
            notes = self.write_chunk(rows, reject, store, delta) if rows else []
            if before is not None:
                before.result()  # raises if that chunk failed: this one is rolled back too
            session.commit()
        except BaseException:
            session.rollback()
            raise
        delta.chunks += 1 if rows else 0
        rejects.flush()
        return notes, delta, read


@dataclass
class _InFlight:
    future: Future[tuple[list[int], ImportReport, int]]
    keys: set[str]


def _columns(header: Iterable[str] | None) -> dict[str, int]:
    if header is None:
        raise ImportFileError("The file is empty; it needs a header row with an 'email' column.")
    columns: dict[str, int] = {}
    for i, name in enumerate(header):
        columns.setdefault(name.strip().lower(), i)
    if "email" not in columns:
        raise ImportFileError(
            "The header row has no 'email' column (found: "
            + ", ".join(repr(h) for h in header)
            + "); optional columns are topics, frequency and name."
        )
    return columns


def import_csv(
    session: Session,
    path: Path,
    newsletter: str,
    *,
    confirmed: bool = False,
    chunk_size: int = CHUNK,
    rejects_path: Path | None = None,
    after_commit: Callable[[list[int]], None] | None = None,
    on_row: Callable[[int], None] | None = None,
    on_chunk: Callable[[ImportReport, int], None] | None = None,
) -> ImportReport:
    """Import a CSV of readers into one newsletter; see the module docstring for the rules."""
    if chunk_size < 1:
        raise ImportFileError("The chunk size must be at least 1.")
    if not path.is_file():
        raise ImportFileError(f"There is no file {str(path)!r}.")
    nl = newsletters.open_newsletter(session, newsletter)
    importer = Importer(session, nl, source=consent_source(path), confirmed=confirmed)
    return importer.run(
        path,
        chunk_size=chunk_size,
        rejects_path=rejects_path,
        after_commit=after_commit,
        on_row=on_row,
        on_chunk=on_chunk,
    )
