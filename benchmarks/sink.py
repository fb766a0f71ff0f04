"""A counting SMTP sink in a process of its own, for the send benchmark.

It is a real aiosmtpd server, so the pipeline and the raw loop pay for a
whole SMTP conversation each message. It keeps one counter per envelope
recipient and nothing else: 100,000 whole messages would be gigabytes, and
duplicates and gaps are a property of the recipients, not the bodies.

Running in its own process keeps its event loop off the GIL of whoever
measures; the parent talks to it over a pipe (`total`, `counts`, `reset`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.sink import Pipelining


class CountingHandler(Pipelining):
    """Accepts every message and counts it once per recipient, after DATA is in.

    It offers PIPELINING as real relays do; the raw loop's smtplib never uses it."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.counts[rcpt] += 1
                self.total += 1
        return "250 2.0.0 OK counted"


def _serve(host: str, port: int, conn: Connection) -> None:
    handler = CountingHandler()
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
            elif command == "reset":
                with handler.lock:
                    handler.counts.clear()
                    handler.total = 0
                conn.send("ok")
            elif command == "stop":
                break
    finally:
        controller.stop()
        conn.send("stopped")


class SinkProcess:
    """The parent's handle on the sink process."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(host, port, child), daemon=True)
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
