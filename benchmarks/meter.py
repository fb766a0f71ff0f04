"""Where a benchmark's CPU went: per process group, from /proc, and the whole machine's.

CPU time a message is what the send benchmark compares across runs on a
shared, noisy machine: rates move with the load, CPU per message much less.
`run_delay` (time spent waiting for a CPU) and the host's steal say how
loaded a run was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool


def rss_peak_mb(pid: int) -> float:
    """The process's high-water RSS (VmHWM): a peak, whenever it happened."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_delay(pid: int) -> float:
    """Seconds the process spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, summed over its CPUs.

    Steal is time the hypervisor gave this VM's CPUs to someone else: on a
    shared host it is the part of a slow run that no process here caused.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def machine_since(before: tuple[float, float]) -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since `before` = machine_seconds()."""
    busy, steal = machine_seconds()
    return busy - before[0], steal - before[1]


def postgres_pids(url: str) -> list[int]:
    """The PostgreSQL processes working for this run: the backends of its database
    (the workers', autovacuum's) and the server's own background processes (WAL
    writer, checkpointer...), not the backends of other databases on the server."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(
                conn.scalars(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                        "AND (datname = current_database() OR datname IS NULL)"
                    )
                )
            )
    finally:
        engine.dispose()


def pids_named(name: str) -> list[int]:
    """Every process whose command is `name` (postgres backends, redis-server)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


class CpuMeter:
    """CPU used by each part of the machine between start() and stop().

    Groups are looked up again at stop(): PostgreSQL backends that the workers
    opened during the run count from zero.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[int, float] = {}

    def start(self) -> None:
        pids = [p for find in self.groups.values() for p in find()]
        self.before = {p: cpu_seconds(p) for p in pids}
        self.waited_before = {p: run_delay(p) for p in pids}

    def stop(self) -> dict[str, float]:
        """Seconds of CPU each group used since start() (it may be asked again later)."""
        return {
            group: sum(cpu_seconds(p) - self.before.get(p, 0.0) for p in find())
            for group, find in self.groups.items()
        }

    def waited(self) -> dict[str, float]:
        """Seconds each group spent runnable but without a CPU since start()."""
        return {
            group: sum(run_delay(p) - self.waited_before.get(p, 0.0) for p in find())
            for group, find in self.groups.items()
        }


# -- the data -------------------------------------------------------------------------


def cpu_per_message(used: dict[str, float], messages: int) -> dict[str, float]:
    """Milliseconds of CPU a message for each part, and `ours` (workers, PostgreSQL, Redis)."""
    per = {group: 1000 * seconds / max(1, messages) for group, seconds in used.items()}
    per["ours"] = per["workers"] + per["postgres"] + per["redis"]
    return {group: round(value, 3) for group, value in per.items()}
