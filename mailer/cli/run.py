"""`mailer web`, `mailer worker`, `mailer beat` and `mailer up`.

`mailer up` is the embedded default in one command: it migrates the SQLite
file, runs the SMTP sink in-process, and supervises web, worker and beat as
child processes. Each child gets its own process group so that Ctrl-C in a
terminal reaches only the supervisor, which then stops the children in an
order it controls (web first, so no new work arrives; beat; worker last, so
it can finish the task in hand) and escalates to SIGKILL after a timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

import click
from aiosmtpd.controller import Controller

from mailer.cli.base import console, settings_or_exit
from mailer.config import Settings, record_up

# `celery -A worker` only works from the repository root, where worker.py is;
# the installed package's module works from anywhere.
CELERY_APP = "mailer.celery_app:app"
STOP_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
CLEAN_EXITS = (0, -signal.SIGTERM, 128 + signal.SIGTERM)


def celery_worker_argv(settings: Settings, concurrency: int = 1) -> list[str]:
    """Solo pool by default: SQLite has one writer, and it stops cleanly on SIGTERM."""
    pool = "solo" if concurrency <= 1 else "threads"
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        f"--pool={pool}",
        f"--concurrency={max(1, concurrency)}",
        "-Q",
        settings.queue,
        "--loglevel",
        settings.log_level,
        "--without-mingle",
        "--without-gossip",
    ]


def celery_beat_argv(settings: Settings) -> list[str]:
    """The schedule file lives in data_dir, so a second checkout never shares it."""
    schedule = (settings.data_dir / "celerybeat-schedule").resolve()
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "beat",
        "--schedule",
        str(schedule),
        "--loglevel",
        settings.log_level,
    ]


def web_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "mailer.web.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
    ]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web app (reader pages and operator API)."""
    import uvicorn

    from mailer.web.app import create_app

    uvicorn.run(create_app(), host=host, port=port)


@click.command()
@click.option(
    "--concurrency", default=1, show_default=True, help="1 = solo pool; more = threads pool."
)
def worker(concurrency: int) -> None:
    """Run a Celery worker on MAILER_QUEUE (same as `celery -A worker worker`)."""
    settings = settings_or_exit()
    argv = celery_worker_argv(settings, concurrency)
    os.execv(argv[0], argv)


@click.command()
def beat() -> None:
    """Run Celery beat, the once-a-minute tick (same as `celery -A worker beat`)."""
    settings = settings_or_exit()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = celery_beat_argv(settings)
    os.execv(argv[0], argv)


# -- mailer up --------------------------------------------------------------------


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    """One supervised process and the thread that prefixes its output."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    killed: bool = field(default=False)

    def start(self, env: dict[str, str], out: IO[str]) -> None:
        # A new session: the terminal's Ctrl-C goes to the supervisor alone.
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pump = threading.Thread(
            target=self._pump, args=(self.proc.stdout, out), name=f"pump-{self.name}", daemon=True
        )
        self.pump.start()

    def _pump(self, stream: IO[bytes] | None, out: IO[str]) -> None:
        if stream is None:
            return
        prefix = f"{self.name:>6} | "
        for raw in iter(stream.readline, b""):
            out.write(prefix + raw.decode(errors="replace").rstrip() + "\n")
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
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
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
        """Stop in list order; True if every child stopped on SIGTERM with status 0."""
        clean = True
        for child in self.children:
            already = child.poll()
            code = child.stop(timeout)
            # Celery exits 0 on warm shutdown; uvicorn re-raises the SIGTERM it handled.
            if already is None and (code not in CLEAN_EXITS or child.killed):
                how = "killed after timeout" if child.killed else f"exit status {code}"
                console.print(f"[yellow]{child.name} did not stop cleanly ({how})[/yellow]")
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
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _prepare_database(settings: Settings) -> None:
    """Migrate the embedded SQLite file; anywhere else the operator migrates on purpose."""
    from mailer import migrate
    from mailer.db import get_engine

    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        console.print(
            "embedded SQLite database: running `mailer db upgrade` "
            f"on {settings.database.removeprefix('sqlite:///')}",
            soft_wrap=True,
            highlight=False,
        )
        migrate.upgrade(settings.database)
        return
    try:
        migrate.require_current(get_engine(settings.database))
    except migrate.NotMigrated as exc:
        raise click.ClickException(str(exc)) from exc


def _prepare_broker(settings: Settings) -> None:
    """Create kombu's SQLAlchemy tables and our queue's row once, before worker and beat race."""
    if not settings.broker.startswith("sqla+"):
        return
    from kombu import Connection

    with Connection(settings.broker) as conn:
        conn.default_channel.queue_declare(queue=settings.queue)


def _start_sink(settings: Settings) -> tuple[Controller, int] | None:
    from mailer.sink import free_port, start_sink

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
    return start_sink(settings.outbox_dir, settings.sink_host, port), port


def _banner(settings: Settings, env: dict[str, str], sink_port: int) -> None:
    base = env["MAILER_BASE_URL"]
    token = (
        "MAILER_API_TOKEN (from the environment)"
        if settings.api_token is not None and settings.api_token.get_secret_value()
        else str((settings.data_dir / "api.token").resolve())
    )
    lines = [
        "",
        "[bold green]mailer is up[/bold green]",
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
        "  first newsletter  mailer newsletter create news --name News"
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
    """Run web, worker, beat and the SMTP sink together (Ctrl-C stops all)."""
    from mailer.sink import port_answers

    settings = settings_or_exit()
    if not _port_free(host, port):
        raise click.ClickException(f"{host}:{port} is in use; pass --port")
    _prepare_database(settings)
    _prepare_broker(settings)

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
        Child("beat", celery_beat_argv(settings)),
        Child("worker", celery_worker_argv(settings, concurrency)),
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
        if supervisor.wait(until=lambda: port_answers(probe, port), timeout=READY_TIMEOUT):
            _banner(settings, env, sink_port)
            supervisor.wait()
        if not supervisor.stopping.is_set():
            dead = supervisor.dead_child()
            problem = (
                f"{dead.name} exited unexpectedly (status {dead.poll()})"
                if dead is not None
                else f"the web app did not answer on {host}:{port} within {READY_TIMEOUT:.0f}s"
            )
    finally:
        if problem:
            console.print(f"[red]{problem}; stopping the others[/red]")
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
