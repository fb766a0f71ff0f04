"""`mailer up`: the embedded default in one command.

It starts whatever the settings say: it makes every directory it will write to, migrates any SQLite
database (PostgreSQL is migrated on purpose: it refuses with the command),
reaches the database and the broker before anything starts, runs the SMTP
sink in-process, and supervises web, worker and beat as child processes.
Anything that stops it at start is one line saying what is wrong and what to
do, never a traceback: a child that dies before it is ready is summed up from
its own last words (its output is held back until all three are ready).

Each child gets its own process group so that Ctrl-C in a terminal reaches
only the supervisor, which then stops the children itself (SIGTERM to all:
web takes no new request, the worker finishes the task in hand) and
escalates to SIGKILL after a timeout. Each is started
through `mailer.lifeline`, so it also dies when the supervisor is SIGKILLed,
and beat holds the data directory's lock: one beat per data directory.

The children's command lines are built in `mailer.cli.run`, beside the
`mailer web`, `mailer worker` and `mailer beat` commands that run one part
on its own; this module is the supervision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import click
from aiosmtpd.controller import Controller

from mailer import lifeline
from mailer.cli.base import console, settings_or_exit
from mailer.cli.run import celery_beat_argv, celery_worker_argv, one_line, web_argv
from mailer.config import Settings, record_up

STOP_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
CLEAN_EXITS = (0, -signal.SIGTERM, 128 + signal.SIGTERM)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


# A Python exception at the end of a child's output: `pkg.mod.SomeError: what happened`.
EXCEPTION_LINE = re.compile(
    r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|NotMigrated|Running)):\s*(.+)$"
)


def failure_reason(lines: Sequence[str]) -> str:
    """What a child that died at start said last that explains it, in one line."""
    for line in reversed(lines):
        found = EXCEPTION_LINE.match(line.strip())
        if found:
            return f"{found.group(1)}: {found.group(2)}"
    for line in reversed(lines):
        if "error" in line.lower():
            return line.strip()
    meaningful = [line.strip() for line in lines if line.strip()]
    return meaningful[-1] if meaningful else "it printed nothing"


@dataclass
class Child:
    """One supervised process and the thread that prefixes its output.

    Until the supervisor releases it, the output is held back: a child that
    fails at start is reported in one line (`failure_reason`), not by its
    traceback. `ready_marker` is the line that says it has started.
    """

    name: str
    argv: list[str]
    ready_marker: str | None = None
    beat_lock: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    killed: bool = field(default=False)
    ready: threading.Event = field(default_factory=threading.Event)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=60))
    held: list[str] | None = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, env: dict[str, str], out: IO[str]) -> None:
        # A new session: the terminal's Ctrl-C goes to the supervisor alone. The
        # lifeline makes the child die with us however we die, even by SIGKILL.
        guard = [sys.executable, "-m", "mailer.lifeline", str(os.getpid())]
        if self.beat_lock is not None:
            guard += ["--beat-lock", str(self.beat_lock)]
        self.proc = subprocess.Popen(
            [*guard, "--", *self.argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.ready_marker is None:
            self.ready.set()
        self.pump = threading.Thread(
            target=self._pump, args=(self.proc.stdout, out), name=f"pump-{self.name}", daemon=True
        )
        self.pump.start()

    def _pump(self, stream: IO[bytes] | None, out: IO[str]) -> None:
        if stream is None:
            return
        prefix = f"{self.name:>6} | "
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if self.ready_marker is not None and line == self.ready_marker:
                self.ready.set()
                continue
            self.tail.append(line)
            with self.lock:
                if self.held is not None:
                    self.held.append(line)
                    continue
            out.write(prefix + line + "\n")
            out.flush()

    def release(self, out: IO[str]) -> None:
        """Print what was held back, and from now on everything as it comes."""
        with self.lock:
            held, self.held = self.held or [], None
            for line in held:
                out.write(f"{self.name:>6} | {line}\n")
            out.flush()

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM the group, wait, then SIGKILL it; the return code, or None if never started."""
        self.signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float) -> int | None:
        """Wait for the child to exit after SIGTERM, then SIGKILL what is left of its group."""
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.signal(signal.SIGKILL)
            code = self.proc.wait(timeout=10)
        # Grandchildren (e.g. a prefork pool) would otherwise outlive us.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.pump is not None:
            self.pump.join(timeout=5)
        return code


class Supervisor:
    """Starts children, watches them, stops them all when one dies or we are told to."""

    def __init__(self, children: Sequence[Child], env: dict[str, str], out: IO[str]) -> None:
        self.children = list(children)
        self.env = env
        self.out = out
        self.stopping = threading.Event()
        self.reason = ""

    def request_stop(self, signum: int, _frame: object) -> None:
        self.reason = signal.Signals(signum).name
        self.stopping.set()

    def start(self) -> None:
        for child in self.children:
            child.start(self.env, self.out)

    def all_ready(self) -> bool:
        return all(child.ready.is_set() for child in self.children)

    def release(self) -> None:
        for child in self.children:
            child.release(self.out)

    def dead_child(self) -> Child | None:
        for child in self.children:
            if child.poll() is not None:
                return child
        return None

    def wait(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Block until stop is requested, a child dies, or `until()` holds; True if `until`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stopping.is_set():
            if self.dead_child() is not None:
                return False
            if until is not None and until():
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.stopping.wait(0.2)
        return False

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM all in list order, then wait for each; True if every child stopped on
        SIGTERM with status 0. Together, not one after another: web takes no new request
        at once, and the worker still finishes the task in hand (what web accepted in the
        meantime waits in the broker)."""
        already = {child.name: child.poll() for child in self.children}
        for child in self.children:
            child.signal(signal.SIGTERM)
        clean = True
        for child in self.children:
            code = child.finish(timeout)
            # Celery exits 0 on warm shutdown; uvicorn re-raises the SIGTERM it handled.
            if already[child.name] is None and (code not in CLEAN_EXITS or child.killed):
                how = "killed after timeout" if child.killed else f"exit status {code}"
                console.print(f"{child.name} did not stop cleanly ({how})", style="yellow")
                clean = False
        return clean


def _child_env(settings: Settings, host: str, port: int, sink_port: int) -> dict[str, str]:
    """The children read the same MAILER_* settings; fill in what `up` decided."""
    env = dict(os.environ)
    env["MAILER_DATA_DIR"] = str(settings.data_dir.resolve())
    if not env.get("MAILER_BASE_URL"):
        link_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        env["MAILER_BASE_URL"] = f"http://{link_host}:{port}"
    if settings.uses_sink:
        env["MAILER_SINK_PORT"] = str(sink_port)
    env["MAILER_SUPERVISED"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (`sqlite:///rel.db`, `sqlite:////abs.db`, `sqla+sqlite:...`)."""
    scheme, sep, rest = url.partition(":///")
    if not sep or not scheme.endswith("sqlite") or rest in ("", ":memory:"):
        return None
    return Path(rest.split("?", 1)[0])


def _prepare_data_dir(settings: Settings) -> None:
    """Every directory the embedded default writes to, made before anything starts."""
    places = [settings.data_dir]
    places += [p.parent for p in map(sqlite_path, (settings.database, settings.broker)) if p]
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(
                f"cannot create {place.resolve()}: {exc.strerror}; "
                "set MAILER_DATA_DIR (or the database's and broker's URLs) to a place "
                "this user can write"
            ) from exc


def _prepare_database(settings: Settings) -> None:
    """Migrate any SQLite file (the embedded default); PostgreSQL is migrated on purpose."""
    from mailer import migrate
    from mailer.db import get_engine

    where = _safe_url(settings.database)
    if sqlite_path(settings.database) is not None:
        console.print(
            f"SQLite database: running `mailer db upgrade` on {where}",
            soft_wrap=True,
            highlight=False,
        )
        with one_line(f"cannot migrate the database at {where}"):
            migrate.upgrade(settings.database)
        return
    hint = "; check MAILER_DATABASE_URL and that the server accepts connections"
    with one_line(f"cannot reach the database at {where}", hint):
        migrate.require_current(get_engine(settings.database))


def _prepare_broker(settings: Settings) -> None:
    """Reach the broker now, so a worker never dies on it behind the banner; for the
    SQLAlchemy transport, create its tables and our queue's row before worker and beat race."""
    from kombu import Connection

    hint = (
        "; start it, or leave MAILER_BROKER_URL empty for the embedded broker"
        if settings.broker_url
        else ""
    )
    with (
        one_line(f"cannot reach the broker at {_safe_url(settings.broker)}", hint),
        Connection(settings.broker, connect_timeout=5) as conn,
    ):
        conn.ensure_connection(max_retries=1, timeout=5)
        if settings.broker.startswith("sqla+"):
            conn.default_channel.queue_declare(queue=settings.queue)


def _check_relay(settings: Settings) -> None:
    """A relay that does not answer is not fatal (mail waits and is retried); say so."""
    if settings.uses_sink:
        return
    parts = urlsplit(settings.smtp_url)
    port = parts.port or (465 if parts.scheme == "smtps" else 25)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=5).close()
    except OSError as exc:
        console.print(
            f"the SMTP relay {parts.hostname}:{port} does not answer "
            f"({exc.strerror or exc}); mail waits and is retried until it does",
            style="yellow",
            soft_wrap=True,
        )


def _start_sink(settings: Settings) -> tuple[Controller, int] | None:
    from mailer.mail.sink import free_port, start_sink

    if not settings.uses_sink:
        return None
    port = settings.sink_port
    if not _port_free(settings.sink_host, port):
        if "MAILER_SINK_PORT" in os.environ:
            raise click.ClickException(
                f"MAILER_SINK_PORT {port} on {settings.sink_host} is in use; pick another"
            )
        port = free_port(settings.sink_host)
        console.print(f"port {settings.sink_port} is in use; the SMTP sink takes {port} instead")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    with one_line(f"cannot start the SMTP sink on {settings.sink_host}:{port}"):
        return start_sink(settings.outbox_dir, settings.sink_host, port), port


def _invocation(argv0: str | None = None) -> str:
    """How to call this mailer again from the same shell: `mailer` when that is what the
    PATH finds, else the path it was started by (`.venv/bin/mailer` from `make run`),
    which a newcomer can paste as it is."""
    started = Path(argv0 or sys.argv[0])
    found = shutil.which("mailer")
    if found and started.name == "mailer" and Path(found).resolve() == started.resolve():
        return "mailer"
    if started.name != "mailer":  # `python -m mailer.cli` and the like
        return "mailer"
    try:
        return str(started.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(started.resolve())


def _banner(settings: Settings, env: dict[str, str], sink_port: int) -> None:
    base = env["MAILER_BASE_URL"]
    token = (
        "MAILER_API_TOKEN (from the environment)"
        if settings.api_token is not None and settings.api_token.get_secret_value()
        else str((settings.data_dir / "api.token").resolve())
    )
    console.print()
    console.print("mailer is up", style="bold green")
    lines = [
        f"  web           {base}   (reader pages: {base}/subscribe/<newsletter>)",
        f"  API docs      {base}/docs",
    ]
    if settings.uses_sink:
        lines.append(f"  outbox        {base}/outbox   (SMTP sink on 127.0.0.1:{sink_port})")
    else:
        lines.append(f"  SMTP          {settings.smtp_url.split('@')[-1]}")
    lines += [
        f"  API token     {token}",
        f"  data dir      {settings.data_dir.resolve()}",
        f"  database      {_safe_url(settings.database)}",
        f"  broker        {_safe_url(settings.broker)}",
        f"  next          {_invocation()} newsletter create news --name News"
        ' --from "News <news@example.org>"',
        "  stop with Ctrl-C",
        "",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _safe_url(url: str) -> str:
    """Never print a password that came in a URL."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--concurrency", default=1, show_default=True, help="Worker concurrency.")
def up(host: str, port: int, concurrency: int) -> None:
    """Run web, worker, beat and the SMTP sink together. Ctrl-C stops all."""
    from mailer.mail.sink import port_answers

    settings = settings_or_exit()
    _prepare_data_dir(settings)
    try:
        lifeline.check_beat_lock(settings.data_dir)
    except lifeline.BeatRunning as exc:
        raise click.ClickException(str(exc)) from exc
    if not _port_free(host, port):
        raise click.ClickException(f"{host}:{port} is in use; pass --port")
    _prepare_broker(settings)
    _prepare_database(settings)
    _check_relay(settings)

    sink = _start_sink(settings)
    sink_port = sink[1] if sink else settings.sink_port
    env = _child_env(settings, host, port, sink_port)
    # Commands run from other shells find the web's address and the sink here.
    record_up(
        settings.data_dir.resolve(),
        base_url=env["MAILER_BASE_URL"],
        sink_port=sink_port if sink else None,
    )

    children = [
        Child("web", web_argv(host, port)),
        Child(
            "beat",
            celery_beat_argv(settings),
            lifeline.READY_MARKER.format("beat"),
            settings.data_dir,
        ),
        Child(
            "worker",
            celery_worker_argv(settings, concurrency),
            lifeline.READY_MARKER.format("worker"),
        ),
    ]
    supervisor = Supervisor(children, env, sys.stdout)
    previous = {
        sig: signal.signal(sig, supervisor.request_stop)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    problem = ""
    try:
        supervisor.start()
        probe = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        started = supervisor.wait(
            until=lambda: port_answers(probe, port) and supervisor.all_ready(),
            timeout=READY_TIMEOUT,
        )
        if started:
            supervisor.release()
            _banner(settings, env, sink_port)
            supervisor.wait()
        if not supervisor.stopping.is_set():
            dead = supervisor.dead_child()
            if dead is None:
                late = ", ".join(c.name for c in children if not c.ready.is_set()) or "web"
                problem = f"{late} did not start within {READY_TIMEOUT:.0f}s"
            elif not started:
                problem = (
                    f"{dead.name} could not start: {failure_reason(dead.tail)} "
                    f"(`mailer {dead.name}` alone shows its whole output)"
                )
            else:
                problem = f"{dead.name} exited unexpectedly (status {dead.poll()})"
    finally:
        if problem:
            console.print(f"{problem}; stopping the others", soft_wrap=True, style="red")
        else:
            console.print(f"{supervisor.reason or 'exit'}: stopping web, beat and worker")
        clean = supervisor.stop_all()
        if sink is not None:
            sink[0].stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if problem:
        sys.exit(1)
    if not clean:
        sys.exit(2)
    console.print("stopped")
