"""End-to-end send benchmark: one digest to N readers, against the raw SMTP limit.

    .venv/bin/python -m benchmarks.send --subscribers 100000 --workers 2 [--dkim] [--sink postfix]
    .venv/bin/python -m benchmarks.send --subscribers 1000000 --prepare-only

It makes a scratch PostgreSQL database (TEST_PG_ADMIN_URL, as the tests
use; dropped at the end), N active readers over a few topic sets and a day
of articles, and starts a counting SMTP server in its own process
(benchmarks/sink.py: aiosmtpd, or Postfix's smtp-sink with `--sink
postfix`). Then it runs the digest the way the tick does: a
`prepare_digest` task on real `celery worker` subprocesses (solo pool, one
SMTP connection each, a queue of their own on Redis), which fans out the
send tasks. The clock runs from the enqueue to the last delivery row
recorded.

In the same run a plain smtplib loop sends the same pre-built bytes (one
real personalised digest per variant) to the same recipients over the same number of
connections, one process per connection like the workers: that is the raw
limit the pipeline is compared with. The sink's own per-recipient count,
checked against the reader list, gives `duplicates` and `missing`.

`--dkim` makes a 2048-bit key for the run and gives it to the workers, so
every message is signed as in production; the raw loop does not sign (it
stays the limit). It then runs once more signing each message with the same
key and signer, and nothing else: its rate over the unsigned one
(`raw_signed_ratio`) is what the signature alone leaves of the raw limit,
and `ratio_to_signed` is the pipeline against that loop. A sample
of the received messages (`--verify`, or every one) is verified with dkimpy
against the run's public key.

`--prepare-only` prepares the edition on one worker and sends nothing: the
send tasks it fans out go to a queue no worker reads, and are purged.

The last line printed is one JSON object (see README, "Performance").

Its parts live beside it: `population` (the readers and articles), `workers`
(the Celery workers and the stall check), `raw` (the raw limit), `meter` (CPU
per process group) and `sink` (the counting servers). What stays here is one
run in order, its two modes (`run`, `prepare_only`), and the command line
with `--repeat`: a sequence read top to bottom, which splitting would only
scatter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from benchmarks.meter import (
    CpuMeter,
    cpu_per_message,
    machine_seconds,
    machine_since,
    pids_named,
    postgres_pids,
    rss_peak_mb,
)
from benchmarks.population import email, has_articles, populate
from benchmarks.raw import Signing, raw_messages, raw_rate
from benchmarks.sink import SINKS, Sink, start_sink
from benchmarks.workers import (
    STALL_SECONDS,
    Stall,
    stalled,
    start_workers,
    stop_workers,
    wait_ready,
)
from mailer.mail.sink import free_port

ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DKIM_SELECTOR = "bench"
DKIM_RECORD_NAME = b"bench._domainkey.news.example.org"
# -- the run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    readers: int
    workers: int
    articles: int
    timeout: float
    dkim: bool = False
    sink: str = "aiosmtpd"
    verify: int | None = 100  # received messages checked with dkimpy; None: every one
    prepare_only: bool = False


@dataclass
class Outcome:
    messages: int
    seconds: float
    prepare_s: float
    duplicates: int
    missing: int
    unexpected: int
    peak_rss_mb: float
    raw_msgs_per_s: float
    raw_signed_msgs_per_s: float | None  # with --dkim: the raw loop signing each message
    steal_s: tuple[float, float]  # stolen by the host during the pipeline, the raw loop
    cpu_ms: dict[str, float]  # CPU per message of each part, and `ours`
    send_cpu_ms: dict[str, float]  # the same from the moment the edition was prepared
    dkim_verified: int = 0
    dkim_failed: int = 0


@dataclass
class Prepared:
    """What `--prepare-only` measures."""

    prepare_s: float
    peak_rss_mb: float
    queued: int
    skipped: int
    db_bytes: int  # the whole database once prepared
    prepare_db_bytes: int  # what prepare added to it


@dataclass
class Run:
    """One benchmark run's scratch state: its queue, files, DKIM key and environment."""

    options: Options
    url: str
    queue: str = field(default_factory=lambda: f"bench-{secrets.token_hex(4)}")
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mailer-bench-")))
    dkim_record: bytes | None = None
    signing: Signing | None = None  # with --dkim, the selector and key file the workers get

    def configure(self, smtp_url: str) -> None:
        """The workers' settings, through the environment as in production. Settings are
        read once per process: set them before anything of mailer reads them."""
        env = {
            "MAILER_ENV": "development",
            "MAILER_DATABASE_URL": self.url,
            "MAILER_BROKER_URL": os.environ.get("MAILER_BROKER_URL", REDIS),
            "MAILER_QUEUE": self.queue,
            "MAILER_SMTP_URL": smtp_url,
            "MAILER_SECRET_KEY": "bench-secret-" + self.queue,
            "MAILER_API_TOKEN": "bench-token",
            "MAILER_DATA_DIR": str(self.data_dir),
            "MAILER_BASE_URL": "https://news.example.org",
            "MAILER_LOG_LEVEL": "WARNING",
        }
        for name in ("MAILER_DKIM_SELECTOR", "MAILER_DKIM_PRIVATE_KEY_PATH"):
            os.environ.pop(name, None)  # unsigned unless --dkim, whatever the caller set
        if self.options.dkim:
            from mailer.mail.dkim import generate_private_key, txt_record_value

            key = self.data_dir / "dkim.pem"
            generate_private_key(key, 2048)
            self.dkim_record = txt_record_value(key.read_bytes()).encode()
            self.signing = (DKIM_SELECTOR, key)
            env |= {"MAILER_DKIM_SELECTOR": DKIM_SELECTOR, "MAILER_DKIM_PRIVATE_KEY_PATH": str(key)}
        os.environ.update(env)
        from mailer import config

        config.get_settings.cache_clear()

    def tidy(self) -> None:
        """The run's files (worker logs, the key) go once it has succeeded; a failed
        run leaves them for a look at the workers' logs."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def verify(self, messages: list[bytes]) -> tuple[int, int]:
        """(verified, failed): each message's DKIM signature checked by dkimpy against
        the run's public key, as a receiver would."""
        import dkim

        record = self.dkim_record

        def lookup(name: bytes, timeout: int = 5) -> bytes | None:
            return record if name.rstrip(b".") == DKIM_RECORD_NAME else None

        good = sum(1 for data in messages if dkim.verify(data, dnsfunc=lookup))
        return good, len(messages) - good


def expected_readers(readers: int) -> set[str]:
    return {email(i) for i in range(readers) if has_articles(i)}


def to_verify(expected: set[str], options: Options) -> set[str]:
    """The recipients whose messages the sink keeps for the DKIM check."""
    if not options.dkim:
        return set()
    if options.verify is None:
        return set(expected)
    return set(random.Random(0).sample(sorted(expected), min(options.verify, len(expected))))


def raw_phase(
    sink: Sink,
    port: int,
    recipients: list[tuple[str, int]],
    bodies: list[list[bytes]],
    conns: int,
    sign: Signing | None,
) -> tuple[float, float]:
    """The raw loop's rate to the run's sink, and the CPU the host stole meanwhile;
    every message is checked to have arrived."""
    sink.reset()
    before = machine_seconds()
    rate = raw_rate("127.0.0.1", port, "news@news.example.org", recipients, bodies, conns, sign)
    busy, steal = machine_since(before)
    arrived = sum(sink.counts().values())
    if arrived != len(recipients):
        print(f"warning: the raw loop delivered {arrived}/{len(recipients)}")
    seconds = len(recipients) / rate if rate else 0.0
    print(
        f"raw smtplib{', signing each message' if sign else ', unsigned'}: {rate:.0f} msgs/s"
        f" over {conns} connection(s); machine busy {busy / max(seconds, 1e-9):.2f}"
        f" of {os.cpu_count()} cores; CPU stolen by the host {steal:.1f}"
    )
    return rate, steal


def run(options: Options, url: str) -> Outcome:
    sink_port = free_port()
    expected = expected_readers(options.readers)
    sink: Sink = start_sink(options.sink, "127.0.0.1", sink_port, keep=to_verify(expected, options))
    bench = Run(options, url)
    bench.configure(sink.url)
    from sqlalchemy import func, select

    from mailer import db, tasks
    from mailer.celery_app import app
    from mailer.models import Delivery, DeliveryStatus, Digest

    procs: list[subprocess.Popen[bytes]] = []
    try:
        _, digest_id = populate(url, options.readers, options.articles)
        procs = start_workers(options.workers, bench.queue, bench.data_dir)
        wait_ready(app, options.workers, procs)
        print(
            f"{options.readers} readers, {len(expected)} with articles; {options.workers} "
            f"worker(s) ready; sink {sink.name}; DKIM {'on' if options.dkim else 'off'}"
        )

        factory = db.session_factory(url)
        open_states = (
            DeliveryStatus.QUEUED,
            DeliveryStatus.SENDING,
            DeliveryStatus.DEFERRED,
            DeliveryStatus.UNKNOWN,
        )
        meter = CpuMeter(
            {
                "sink": lambda: [sink.pid],
                "workers": lambda: [p.pid for p in procs],
                "postgres": lambda: postgres_pids(url),
                "redis": lambda: pids_named("redis-server"),
            }
        )
        meter.start()
        machine_before = machine_seconds()
        started = time.time()
        tasks.prepare_digest.delay(digest_id)
        prepared_at: float | None = None
        at_prepared: dict[str, float] = {}
        deadline = time.monotonic() + options.timeout
        last_check = 0.0
        stall = Stall(STALL_SECONDS)
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edition was not sent within {options.timeout:.0f} s")
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"a worker exited with {proc.returncode}; see {bench.data_dir}/worker*.log"
                    )
            if prepared_at is None:
                with factory() as session:
                    status = session.scalar(select(Digest.status).where(Digest.id == digest_id))
                if status != "created":
                    prepared_at = time.time()
                    at_prepared = meter.stop()
                time.sleep(0.02)
                continue
            # The sink's count is free to ask for; the database only now and then.
            got = sink.total()
            if got >= len(expected) or time.monotonic() - last_check > 5:
                last_check = time.monotonic()
                with factory() as session:
                    still_open = session.scalar(
                        select(func.count()).where(
                            Delivery.digest_id == digest_id, Delivery.status.in_(open_states)
                        )
                    )
                if not still_open:
                    break
                if stall.stuck((got, still_open)):
                    with factory() as session:
                        raise RuntimeError(stalled(session, digest_id, bench.data_dir))
            time.sleep(0.1)
        with factory() as session:
            last = session.scalar(
                select(func.max(Delivery.updated_at)).where(Delivery.digest_id == digest_id)
            )
        assert last is not None
        seconds = last.timestamp() - started
        used = meter.stop()
        waited = meter.waited()
        busy, steal_pipeline = machine_since(machine_before)
        cpu_ms = cpu_per_message(used, len(expected))
        sending = {group: used[group] - at_prepared.get(group, 0.0) for group in used}
        send_cpu_ms = cpu_per_message(sending, len(expected))
        print(
            "CPU per message (ms): "
            + ", ".join(f"{g} {v:.2f}" for g, v in cpu_ms.items())
            + f"; these busy {sum(used.values()) / seconds:.2f} of {os.cpu_count()} cores,"
            + f" the whole machine {busy / seconds:.2f}"
        )
        print(
            "of which sending, once prepared (ms): "
            + ", ".join(f"{g} {v:.2f}" for g, v in send_cpu_ms.items())
        )
        print(
            "waited for a CPU (s): "
            + ", ".join(f"{g} {v:.1f}" for g, v in waited.items())
            + f"; CPU stolen by the host {steal_pipeline:.1f}"
        )
        counts = sink.counts()
        peak = max(rss_peak_mb(p.pid) for p in procs)
        print(f"pipeline: {sum(counts.values())} messages in {seconds:.2f} s")
        verified = failed = 0
        if options.dkim:
            kept = [data for messages in sink.kept().values() for data in messages]
            verified, failed = bench.verify(kept)
            print(f"DKIM: {verified} of {len(kept)} received messages verify with dkimpy")

        recipients, bodies = raw_messages(url, digest_id)
        sizes = "/".join(str(sum(map(len, parts))) for parts in bodies)
        print(f"raw smtplib: bodies {sizes} bytes")
        raw, raw_steal = raw_phase(sink, sink_port, recipients, bodies, options.workers, None)
        raw_signed = None
        if options.dkim:
            # The same loop signing each message: the raw limit once every message is signed.
            raw_signed, _ = raw_phase(
                sink, sink_port, recipients, bodies, options.workers, bench.signing
            )
            print(f"the raw loop signing: {raw_signed / raw:.3f} of its unsigned rate")
        outcome = Outcome(
            messages=sum(counts.values()),
            seconds=seconds,
            prepare_s=(prepared_at or started) - started,
            duplicates=sum(n - 1 for n in counts.values() if n > 1),
            missing=len(expected - counts.keys()),
            unexpected=len(counts.keys() - expected),
            peak_rss_mb=peak,
            raw_msgs_per_s=raw,
            raw_signed_msgs_per_s=raw_signed,
            steal_s=(steal_pipeline, raw_steal),
            cpu_ms=cpu_ms,
            send_cpu_ms=send_cpu_ms,
            dkim_verified=verified,
            dkim_failed=failed,
        )
        bench.tidy()
        return outcome
    finally:
        # The broker may be what failed; then there is nothing left to tidy.
        with contextlib.suppress(Exception):
            app.control.purge()
        stop_workers(procs)
        sink.stop()
        db.dispose_all()


def database_bytes(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text("SELECT pg_database_size(current_database())")) or 0)
    finally:
        engine.dispose()


def prepare_only(options: Options, url: str) -> Prepared:
    """Prepare the edition on one real worker and send nothing.

    The worker reads a queue of its own that only the prepare task is sent
    to; the send tasks that prepare fans out go to the run's default queue,
    which no worker reads, and are purged at the end. Its peak RSS is the
    prepare's, and the database's size is taken before and after.
    """
    bench = Run(options, url)
    bench.configure("smtp://127.0.0.1:9")  # never dialled: nothing is sent
    from sqlalchemy import func, select

    from mailer import db, tasks
    from mailer.celery_app import app
    from mailer.models import Delivery, DeliveryStatus, Digest

    prepare_queue = bench.queue + "-prepare"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _, digest_id = populate(url, options.readers, options.articles)
        procs = start_workers(1, prepare_queue, bench.data_dir)
        wait_ready(app, 1, procs)
        before = database_bytes(url)
        print(f"{options.readers} readers; a worker ready to prepare; database {before} bytes")
        factory = db.session_factory(url)
        started = time.time()
        tasks.prepare_digest.apply_async((digest_id,), queue=prepare_queue)
        deadline = time.monotonic() + options.timeout
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edition was not prepared within {options.timeout:.0f} s")
            with factory() as session:
                digest = session.get_one(Digest, digest_id)
                prepared_at = digest.prepared_at
            if prepared_at is not None:
                break
            time.sleep(0.05)
        seconds = time.time() - started
        # The task commits, then fans out: its RSS peak is reached by then.
        time.sleep(0.5)
        with factory() as session:
            rows = dict(
                session.execute(
                    select(Delivery.status, func.count())
                    .where(Delivery.digest_id == digest_id)
                    .group_by(Delivery.status)
                ).all()
            )
        after = database_bytes(url)
        bench.tidy()
        return Prepared(
            prepare_s=seconds,
            peak_rss_mb=rss_peak_mb(procs[0].pid),
            queued=rows.get(DeliveryStatus.QUEUED, 0),
            skipped=rows.get(DeliveryStatus.SKIPPED, 0),
            db_bytes=after,
            prepare_db_bytes=after - before,
        )
    finally:
        with contextlib.suppress(Exception):
            app.control.purge()
        stop_workers(procs)
        db.dispose_all()


def flags(args: argparse.Namespace) -> list[str]:
    """The command-line flags of a run: what `--repeat` gives each of its runs."""
    out = []
    for flag in ("subscribers", "workers", "articles", "timeout", "sink"):
        out += [f"--{flag}", str(getattr(args, flag))]
    out += ["--verify", "all" if args.verify is None else str(args.verify)]
    for flag in ("dkim", "prepare_only"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    return out


def repeat(args: argparse.Namespace) -> None:
    """Run the benchmark `--repeat` times in fresh processes and report the median.

    On a shared two-core machine one run's ratio moves by ±10 % with the load
    around it (the raw loop runs minutes after the pipeline): the median of a
    few runs, printed with every run's numbers, says more than any one run.
    With `--prepare-only` the median is by prepare time.
    """
    command = [sys.executable, "-m", "benchmarks.send", *flags(args)]
    runs = []
    for i in range(args.repeat):
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"run {i + 1}: " + done.stdout.strip().splitlines()[-1], flush=True)
    keys: tuple[str, ...]
    if args.prepare_only:
        by, keys = "prepare_s", ("prepare_s", "peak_rss_mb", "db_bytes_per_reader")
    else:
        by, keys = "ratio", ("ratio", "msgs_per_s", "raw_msgs_per_s", "steal_s", "cpu_ms_per_msg")
        if args.dkim:
            keys += ("raw_signed_msgs_per_s", "raw_signed_ratio", "ratio_to_signed")
    ordered = sorted(runs, key=lambda r: r[by])
    median = ordered[len(ordered) // 2]
    summary = {key: [r[key] for r in runs] for key in keys}
    print(json.dumps(median | {"runs": summary}), flush=True)


def verify_count(value: str) -> int | None:
    if value == "all":
        return None
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError("a count of messages, or `all`")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--articles", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="sign every message as in production, with a 2048-bit key made for the run "
        "(the raw loop does not sign; a second raw loop does, for comparison)",
    )
    parser.add_argument(
        "--sink",
        choices=SINKS,
        default="aiosmtpd",
        help="the receiving server: aiosmtpd (Python) or Postfix's smtp-sink (C)",
    )
    parser.add_argument(
        "--verify",
        type=verify_count,
        default=100,
        metavar="N|all",
        help="with --dkim, how many received messages dkimpy verifies [default: 100]",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="prepare the edition on one worker and send nothing: prepare seconds, "
        "the worker's peak RSS, database bytes per reader",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="whole runs, each on a fresh database; the last line is the median run by ratio",
    )
    args = parser.parse_args()
    if args.repeat > 1:
        repeat(args)
        return
    options = Options(
        readers=args.subscribers,
        workers=args.workers,
        articles=args.articles,
        timeout=args.timeout,
        dkim=args.dkim,
        sink=args.sink,
        verify=args.verify,
        prepare_only=args.prepare_only,
    )

    from mailer import migrate

    name = f"mailer_bench_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate.upgrade(url)
        if options.prepare_only:
            prepared = prepare_only(options, url)
        else:
            out = run(options, url)
    finally:
        from mailer import db

        db.dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    if options.prepare_only:
        result: dict[str, Any] = {
            "prepare_s": round(prepared.prepare_s, 2),
            "peak_rss_mb": round(prepared.peak_rss_mb, 1),
            "db_bytes_per_reader": round(prepared.db_bytes / args.subscribers),
            "prepare_db_bytes_per_reader": round(prepared.prepare_db_bytes / args.subscribers),
            "queued": prepared.queued,
            "skipped": prepared.skipped,
            "subscribers": args.subscribers,
        }
        print(json.dumps(result), flush=True)
        return
    rate = out.messages / out.seconds if out.seconds > 0 else 0.0
    result = {
        "messages": out.messages,
        "seconds": round(out.seconds, 2),
        "msgs_per_s": round(rate, 1),
        "raw_msgs_per_s": round(out.raw_msgs_per_s, 1),
        "ratio": round(rate / out.raw_msgs_per_s, 3) if out.raw_msgs_per_s else 0.0,
        "prepare_s": round(out.prepare_s, 2),
        "peak_rss_mb": round(out.peak_rss_mb, 1),
        "duplicates": out.duplicates,
        "missing": out.missing,
        "unexpected": out.unexpected,
        "subscribers": args.subscribers,
        "workers": args.workers,
        "steal_s": [round(v, 1) for v in out.steal_s],
        "cpu_ms_per_msg": out.cpu_ms,
        "send_cpu_ms_per_msg": out.send_cpu_ms,
        "dkim": options.dkim,
        "sink": options.sink,
    }
    if options.dkim and out.raw_signed_msgs_per_s:
        signed = out.raw_signed_msgs_per_s
        result |= {
            "dkim_verified": out.dkim_verified,
            "dkim_failed": out.dkim_failed,
            "raw_signed_msgs_per_s": round(signed, 1),
            # What the signature alone leaves of the raw limit, and the pipeline against it.
            "raw_signed_ratio": round(signed / out.raw_msgs_per_s, 3),
            "ratio_to_signed": round(rate / signed, 3),
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
