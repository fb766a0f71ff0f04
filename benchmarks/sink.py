"""The send benchmark's receiving SMTP servers, each in a process of its own.

Two of them, with one interface (`Sink`): `aiosmtpd`, a Python server like
the built-in sink, and `postfix`, Postfix's `smtp-sink`, a C server that
takes what smtplib sends at about the rate this machine allows (DESIGN.md)
and so leaves the comparison to the sender. Both count what they accepted
per envelope recipient, exactly: duplicates and gaps are a property of the
recipients, not the bodies. Both keep the whole message of the recipients
asked for (`keep`), so its DKIM signature can be checked; 100,000 whole
messages would be gigabytes in memory, so by default they keep none.

Running in a process of its own keeps the server's CPU apart from the
workers' and off the GIL of whoever measures.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.mail.sink import Pipelining, port_answers

SMTP_SINK = "/usr/sbin/smtp-sink"
SINKS = ("aiosmtpd", "postfix")


class Sink(Protocol):
    name: str
    host: str
    port: int

    @property
    def pid(self) -> int: ...

    @property
    def url(self) -> str: ...

    def total(self) -> int:
        """Messages accepted so far (cheap: asked every tenth of a second)."""

    def counts(self) -> dict[str, int]:
        """Messages accepted per envelope recipient since the start or the last reset."""

    def kept(self) -> dict[str, list[bytes]]:
        """The whole messages of the recipients in `keep`, as received."""

    def reset(self) -> None:
        """Forget what was received (counts and kept messages) and keep nothing more."""

    def stop(self) -> None: ...


def start_sink(name: str, host: str, port: int, keep: Collection[str] = ()) -> Sink:
    if name == "aiosmtpd":
        return AiosmtpdSink(host, port, keep)
    if name == "postfix":
        return PostfixSink(host, port, keep)
    raise ValueError(f"unknown sink {name!r}; one of {', '.join(SINKS)}")


# -- aiosmtpd --------------------------------------------------------------------------


class CountingHandler(Pipelining):
    """Accepts every message and counts it once per recipient, after DATA is in.

    It offers PIPELINING as real relays do; the raw loop's smtplib never uses it."""

    def __init__(self, keep: Collection[str]) -> None:
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.keep = set(keep)
        self.kept: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.total += 1
            for rcpt in envelope.rcpt_tos:
                self.counts[rcpt] += 1
                if rcpt in self.keep:
                    content = envelope.original_content or b""
                    self.kept.setdefault(rcpt, []).append(bytes(content))
        return "250 2.0.0 OK counted"


def _serve(host: str, port: int, keep: Collection[str], conn: Connection) -> None:
    handler = CountingHandler(keep)
    controller = Controller(handler, hostname=host, port=port, ready_timeout=30)
    controller.start()
    conn.send("ready")
    try:
        while True:
            command = conn.recv()
            if command == "total":
                conn.send(handler.total)
            elif command == "counts":
                with handler.lock:
                    conn.send(dict(handler.counts))
            elif command == "kept":
                with handler.lock:
                    conn.send(dict(handler.kept))
            elif command == "reset":
                with handler.lock:
                    handler.counts.clear()
                    handler.total = 0
                    handler.keep.clear()
                    handler.kept.clear()
                conn.send("ok")
            elif command == "stop":
                break
    finally:
        controller.stop()
        conn.send("stopped")


class AiosmtpdSink:
    """The parent's handle on an aiosmtpd sink process."""

    name = "aiosmtpd"

    def __init__(self, host: str, port: int, keep: Collection[str] = ()) -> None:
        self.host, self.port = host, port
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(host, port, set(keep), child), daemon=True)
        self._proc.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            raise RuntimeError("the SMTP sink did not start")

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def _ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def total(self) -> int:
        return int(self._ask("total"))

    def counts(self) -> dict[str, int]:
        return dict(self._ask("counts"))

    def kept(self) -> dict[str, list[bytes]]:
        return dict(self._ask("kept"))

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(EOFError, OSError):
                self._ask("stop")
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)


# -- Postfix's smtp-sink ----------------------------------------------------------------

# The envelope recipient in smtp-sink's header block of a dumped message.
_RCPT = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.MULTILINE)
# Where that header block ends: its own three-line Received field.
_BLOCK_END = re.compile(rb"^Received: .*\n\tby .* \(smtp-sink\) .*\n\t.*\n", re.MULTILINE)
_COUNTER = re.compile(rb"mesg=(\d+)")


def _tmpfs() -> str | None:
    """Where the dumps go: a tmpfs when there is one (a disk would slow the sink)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class PostfixSink:
    """Postfix's `smtp-sink` (a C server from the `postfix` package; only this test
    program is run, never the Postfix mail system), counting exactly.

    It dumps each accepted message to a file of its own (`-d`), named with a
    random number it retries until the name is new (O_EXCL), and deletes the
    file of a transaction that does not end in an accepted "." (a client that
    hangs up mid-DATA). Each file starts with smtp-sink's own header block,
    which names the envelope recipients (`X-Rcpt-Args`): reading the files
    after the run gives the exact count per recipient. The files go to a
    tmpfs; `reset` starts a new directory, so each phase counts its own.
    Its `-c` counter on stdout gives the running total. smtp-sink offers
    PIPELINING, as Postfix itself does.
    """

    name = "postfix"

    def __init__(self, host: str, port: int, keep: Collection[str] = ()) -> None:
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError(
                f"{SMTP_SINK} is missing: install the Debian package `postfix` "
                "(only its smtp-sink test program is used)"
            )
        self.host, self.port = host, port
        self.keep = set(keep)
        self.root = Path(tempfile.mkdtemp(prefix="mailer-bench-sink-", dir=_tmpfs()))
        self._phase = 0
        command = [SMTP_SINK, "-c", "-d", str(self.root / "dump" / "%M" / "m."), f"{host}:{port}"]
        command.append("256")
        if os.geteuid() == 0:  # smtp-sink refuses to run as root: it drops to `nobody`
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            command[1:1] = ["-u", "nobody"]
        self._total = 0
        self._base = 0
        self._proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        threading.Thread(target=self._read_counter, daemon=True).start()
        deadline = time.monotonic() + 30
        while not port_answers(host, port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"smtp-sink did not start listening on {host}:{port}")
            time.sleep(0.05)

    def _read_counter(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while chunk := os.read(fd, 4096):
            found = _COUNTER.findall(chunk)
            if found:
                self._total = int(found[-1])

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def _files(self) -> Iterator[Path]:
        dump = self.root / "dump"
        if dump.is_dir():
            for minute in dump.iterdir():
                yield from minute.iterdir()

    def total(self) -> int:
        """Messages accepted this phase, from smtp-sink's running counter: it can
        lag the files by a moment, never run ahead of them."""
        return self._total - self._base

    def counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for path in self._files():
            with path.open("rb") as fh:
                head = fh.read(4096)
            block = _BLOCK_END.search(head)
            if block is None:
                raise RuntimeError(f"{path}: no smtp-sink header block in the first 4 KB")
            for rcpt in _RCPT.findall(head, 0, block.start()):
                counts[rcpt.decode("utf-8", "replace")] += 1
        return dict(counts)

    def kept(self) -> dict[str, list[bytes]]:
        """The kept recipients' messages as received: smtp-sink writes each after its
        own header block with LF line ends and an empty line more; both go."""
        out: dict[str, list[bytes]] = {}
        if not self.keep:
            return out
        for path in self._files():
            data = path.read_bytes()
            block = _BLOCK_END.search(data)
            assert block is not None
            message = data[block.end() : -1].replace(b"\n", b"\r\n")
            for rcpt in _RCPT.findall(data, 0, block.start()):
                address = rcpt.decode("utf-8", "replace")
                if address in self.keep:
                    out.setdefault(address, []).append(message)
        return out

    def reset(self) -> None:
        """A new phase: the dumps so far move aside (smtp-sink makes the directory
        again for the next message) and are deleted; the counter starts again."""
        self._phase += 1
        dump = self.root / "dump"
        done = 0
        if dump.exists():
            old = self.root / f"done-{self._phase}"
            dump.rename(old)
            # The files, not the counter, say how many messages this phase took:
            # smtp-sink's counter reaches our reading thread a little later.
            done = sum(1 for minute in old.iterdir() for _ in minute.iterdir())
            shutil.rmtree(old, ignore_errors=True)
        self._base += done
        self.keep.clear()

    def stop(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)
