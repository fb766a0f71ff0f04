"""The embedded broker file (kombu's SQLAlchemy transport) over many ticks, with and without
the tick's purge of delivered messages: file size and the time of an idle worker's poll.

    .venv/bin/python -m benchmarks.broker --messages 20000

Each "tick" is one message sent and consumed the way a Celery worker takes it
(a kombu SimpleQueue on `sqla+sqlite:///…`, ack after get), as beat's
once-a-minute tick is; 20,000 is about two weeks of ticks. `poll_ms` is the
median time of a get on the then empty queue, what an idle worker repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from queue import Empty

from kombu import Connection

from mailer import broker
from mailer.config import Settings

PAYLOAD = {"task": "mailer.tasks.tick", "args": [], "kwargs": {}, "pad": "x" * 900}


def run(directory: Path, messages: int, purge_every: int | None) -> dict[str, float]:
    url = f"sqla+sqlite:///{directory / 'broker.db'}"
    settings = Settings(broker_url=url)
    with Connection(url) as conn:
        queue = conn.SimpleQueue("bench")
        for n in range(messages):
            queue.put(PAYLOAD)
            queue.get(timeout=5).ack()
            if purge_every and (n + 1) % purge_every == 0:
                broker.purge_consumed(settings)
        polls = []
        for _ in range(50):
            started = time.perf_counter()
            with contextlib.suppress(Empty):
                queue.get(block=False)
            polls.append(time.perf_counter() - started)
        queue.close()
    return {
        "file_mb": (directory / "broker.db").stat().st_size / 1e6,
        "poll_ms": statistics.median(polls) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    for label, every in (("kept (no purge)", None), ("purged every tick", 1)):
        with tempfile.TemporaryDirectory() as tmp:
            out = run(Path(tmp), args.messages, every)
        print(
            f"{label:>20}: {args.messages} ticks, file {out['file_mb']:.2f} MB, "
            f"idle poll {out['poll_ms']:.2f} ms"
        )


if __name__ == "__main__":
    main()
