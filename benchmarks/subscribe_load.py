"""Subscribe requests per second against one web process on PostgreSQL.

    .venv/bin/python -m benchmarks.subscribe_load --requests 5000 --concurrency 32

It makes a scratch PostgreSQL database (TEST_PG_ADMIN_URL; dropped at the
end), starts one `uvicorn mailer.web.app:create_app` process on it with a
Redis broker and a queue of its own (the endpoint validates, then queues a
Celery task; no worker runs, the queue is purged at the end), and loads it
from this process with httpx over asyncio: JSON POSTs to /subscribe, each a
new address, so every request does the whole validation and enqueue. The
per-IP and per-address limits are raised for the run: they would otherwise
answer 429, which is cheaper and not what is measured.

The last line printed is one JSON object: requests, seconds, req_per_s,
statuses, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

import httpx
from sqlalchemy import create_engine, text

from mailer.mail.sink import free_port, port_answers

ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the web process exited with {proc.returncode}")
        if port_answers("127.0.0.1", port):
            return
        time.sleep(0.1)
    raise RuntimeError("the web process did not answer")


async def load(base: str, total: int, concurrency: int) -> tuple[float, Counter[int], list[float]]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    counter = iter(range(total))
    run = secrets.token_hex(3)

    async def user(client: httpx.AsyncClient) -> None:
        for i in counter:
            body = {"email": f"load{run}.{i}@example.org", "newsletter": "load", "topics": []}
            started = time.perf_counter()
            response = await client.post("/subscribe", json=body)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        # A short warm-up so the first connections and imports are not timed.
        for i in range(20):
            await client.post(
                "/subscribe", json={"email": f"warm{run}.{i}@example.org", "newsletter": "load"}
            )
        started = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
        return time.perf_counter() - started, statuses, latencies


WRK_SCRIPT = """
local tid = 0
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
end
local n = 0
function request()
  n = n + 1
  local email = "wrk" .. run .. "." .. tid .. "." .. n .. "@example.org"
  local body = '{"email":"' .. email .. '","newsletter":"load"}'
  return wrk.format("POST", "/subscribe", {["Content-Type"] = "application/json"}, body)
end
"""


def load_wrk(base: str, duration: int, concurrency: int) -> dict[str, object]:
    """wrk from a second process: two threads, each request a new address."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'run = "{secrets.token_hex(3)}"\n' + WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", script.name, base],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    os.unlink(script.name)

    def grab(pattern: str) -> str:
        match = re.search(pattern, out)
        return match.group(1) if match else "0"

    def ms(value: str) -> float:
        number, unit = float(value[:-2] if value.endswith("ms") else value[:-1]), value[-2:]
        return round(
            number if unit == "ms" else number * 1000 if value.endswith("s") else number, 1
        )

    return {
        "requests": int(grab(r"(\d+) requests in")),
        "seconds": duration,
        "req_per_s": float(grab(r"Requests/sec:\s+([\d.]+)")),
        "non_2xx": int(grab(r"Non-2xx or 3xx responses: (\d+)")),
        "p50_ms": ms(grab(r"50%\s+(\S+)")),
        "p99_ms": ms(grab(r"99%\s+(\S+)")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--tool",
        choices=["wrk", "httpx"],
        default="wrk" if shutil.which("wrk") else "httpx",
        help="wrk (Debian's, C) loads harder with less CPU than this process's httpx",
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds, for wrk")
    args = parser.parse_args()

    name = f"mailer_load_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    queue = f"load-{secrets.token_hex(4)}"
    port = free_port()
    env = dict(
        os.environ,
        MAILER_ENV="development",
        MAILER_DATABASE_URL=url,
        MAILER_BROKER_URL=REDIS,
        MAILER_QUEUE=queue,
        MAILER_SECRET_KEY="load-secret-" + queue,
        MAILER_API_TOKEN="load-token",
        MAILER_DATA_DIR=tempfile.mkdtemp(prefix="mailer-load-"),
        MAILER_BASE_URL=f"http://127.0.0.1:{port}",
        MAILER_SMTP_URL="smtp://127.0.0.1:9",
        MAILER_SUBSCRIBE_RATE_IP_PER_MINUTE="100000000",
        MAILER_SUBSCRIBE_RATE_ADDRESS_PER_HOUR="100000000",
        MAILER_LOG_LEVEL="WARNING",
    )
    web: subprocess.Popen[bytes] | None = None
    try:
        from mailer import db, migrate
        from mailer.readers.newsletters import create_newsletter

        migrate.upgrade(url)
        with db.session_scope(url) as session:
            create_newsletter(session, "load", "Load", "Load <load@example.org>")
        db.dispose_all()
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "mailer.web.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            start_new_session=True,
        )
        wait_port(port, web)
        if args.tool == "wrk":
            result = load_wrk(f"http://127.0.0.1:{port}", args.duration, args.concurrency)
        else:
            seconds, statuses, latencies = asyncio.run(
                load(f"http://127.0.0.1:{port}", args.requests, args.concurrency)
            )
            latencies.sort()
            result = {
                "requests": args.requests,
                "seconds": round(seconds, 2),
                "req_per_s": round(args.requests / seconds, 1),
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
                "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
            }
    finally:
        if web is not None and web.poll() is None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=20)
        import redis

        redis.Redis.from_url(REDIS).delete(queue)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(json.dumps({"tool": args.tool, "concurrency": args.concurrency, **result}), flush=True)


if __name__ == "__main__":
    main()
