"""Children that cannot outlive `mailer up`, and one beat per data directory.

`mailer up` starts web, worker and beat through `python -m mailer.lifeline`,
which asks Linux to send the child SIGTERM the moment its supervisor dies
(`PR_SET_PDEATHSIG`, kept across exec), makes sure the supervisor had not
already died before that was asked, and then execs the real command. A
SIGKILLed `mailer up` therefore takes its children with it (they stop as on
Ctrl-C: the worker finishes the task in hand), instead of leaving them
holding the port and running a second worker and beat after a restart.

Beat is started holding an exclusive lock on `$MAILER_DATA_DIR/beat.lock`
(an flock on a descriptor it inherits, released by the kernel when beat
exits, however it exits), so a second `mailer up` or `mailer beat` on the
same data directory is refused instead of ticking twice.

This module imports nothing heavy: it runs before every child.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
LOCK_NAME = "beat.lock"
EXIT_LOCKED = 75  # EX_TEMPFAIL: another beat holds the data directory
# What a supervised worker or beat prints when it has started (see mailer.celery_app).
READY_MARKER = "mailer-up: {} ready"


class BeatRunning(RuntimeError):
    """Another beat holds this data directory; the message says which and what to do."""


def lock_path(data_dir: Path) -> Path:
    return data_dir.resolve() / LOCK_NAME


def hold_beat_lock(data_dir: Path) -> int:
    """An open descriptor holding the data directory's beat lock, inheritable across exec.

    Raises BeatRunning, naming the holder's pid, when another process has it.
    """
    path = lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BeatRunning(
            f"another beat (pid {holder}) already runs on the data directory {path.parent}; "
            "exactly one may: stop that `mailer up` or `mailer beat`, or give this one "
            "its own MAILER_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(fd, True)
    return fd


def check_beat_lock(data_dir: Path) -> None:
    """Raise BeatRunning if a beat holds the lock now; take nothing."""
    os.close(hold_beat_lock(data_dir))


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when `parent` dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died between our fork and the prctl
        sys.exit(1)


def main(argv: list[str]) -> None:
    """`python -m mailer.lifeline PARENT_PID [--beat-lock DATA_DIR] -- COMMAND...`"""
    parent = int(argv[0])
    rest = argv[1:]
    data_dir = None
    if rest[:1] == ["--beat-lock"]:
        data_dir, rest = Path(rest[1]), rest[2:]
    if rest[:1] != ["--"] or len(rest) < 2:
        sys.exit("usage: python -m mailer.lifeline PARENT_PID [--beat-lock DIR] -- COMMAND...")
    command = rest[1:]
    die_with_parent(parent)
    if data_dir is not None:
        try:
            hold_beat_lock(data_dir)  # kept open through exec: beat holds it for life
        except BeatRunning as exc:
            print(f"BeatRunning: {exc}", file=sys.stderr, flush=True)
            sys.exit(EXIT_LOCKED)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
