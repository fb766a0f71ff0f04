"""Run a program on a test host of its own: a network namespace with a non-loopback address.

Some rules depend on where a peer is (a fetch refused for a loopback
address, a password kept off a cleartext connection except to loopback), so
their tests need a peer on an address that is not 127.0.0.1. A new network
namespace (`unshare --net`, root as here and in CI) has only its own `lo`;
the test gives it one more address there. Nothing in it can reach, or be
reached from, any network: the program and its peers all run inside. It
talks to the test through its exit status and a JSON document on stdout,
and uses SQLite (a file, which needs no network) when it needs a database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]

# A global unicast address inside the namespace, for a hop that must look public: from
# 192.88.99.0/24, the retired 6to4 relay anycast prefix (RFC 7526), routed to no one now.
PUBLIC_LOOKING = "192.88.99.80"
# Not loopback, not global: TEST-NET-2 (RFC 5737), for a peer that must merely not be loopback.
NOT_LOOPBACK = "198.51.100.25"


def run_in_netns(address: str, module: str, *args: str, timeout: float = 120) -> Any:
    """`python -m module args` in a namespace where `address` is on `lo`; its JSON output."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        service_missing("unshare and ip (util-linux, iproute2)", FileNotFoundError(module))
        raise AssertionError("unreachable")  # service_missing skips or fails
    script = f'{ip} link set lo up && {ip} addr add {address}/32 dev lo && exec "$@"'
    done = subprocess.run(
        [unshare, "--net", "sh", "-c", script, "sh", sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        timeout=timeout,
    )
    if done.returncode != 0 and b"unshare failed" in done.stderr:
        service_missing("a network namespace (unshare --net)", OSError(done.stderr.decode()))
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    return json.loads(done.stdout.decode().strip().splitlines()[-1])
