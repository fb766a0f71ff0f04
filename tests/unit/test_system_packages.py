"""`make test` installs the system packages the tests need, or says in one line what to run.

scripts/system-packages is run for real; only apt-get is a stand-in (a script
that records how it was called), since installing packages is not something
a test may do to the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "system-packages"
LIST = ROOT / ".ci" / "system-packages.txt"
ABSENT = "no-such-package-mailer"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tests switch users: run as root")


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory anyone can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mailer-packages-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def fake_apt(place: Path) -> Path:
    """An apt-get that records its arguments, environment and the service policy it saw."""
    apt = place / "apt-get"
    apt.write_text(
        "#!/bin/sh\n"
        f'echo "$* DEBIAN_FRONTEND=$DEBIAN_FRONTEND RUNLEVEL=$RUNLEVEL" >> {place}/calls\n'
        f'sh "$POLICY_RC_D" postfix start; echo "policy says $?" >> {place}/calls\n'
    )
    apt.chmod(0o755)
    return apt


def run(place: Path, *, listed: str | None = None, user: int | None = None, **env: str):
    if listed is not None:
        (place / "list.txt").write_text(listed)
        env["MAILER_SYSTEM_PACKAGES"] = str(place / "list.txt")
    argv = [str(SCRIPT)]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(
        argv, env=dict(os.environ) | env, capture_output=True, text=True, timeout=60
    )


def test_with_every_package_there_it_does_nothing_and_asks_nothing_of_apt(place):
    done = run(place, APT_GET=str(fake_apt(place)))
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert not (place / "calls").exists()


MISSING = f"{ABSENT} /nonexistent/bin/mailer-probe\nbash bash  # there\n"
ONE_LINE = (
    f"missing system packages: {ABSENT} (the browser, mail-quality, IMAP and performance "
    f"tests need them); install them as root: sudo apt-get install -y {ABSENT}\n"
)


def test_not_root_it_stops_at_once_naming_the_packages_and_the_command(place):
    done = run(place, listed=MISSING, user=65534, APT_GET=str(fake_apt(place)))
    assert done.returncode == 1
    assert done.stderr == ONE_LINE
    assert not (place / "calls").exists()


def test_without_a_package_manager_it_says_the_same(place):
    done = run(place, listed=MISSING, APT_GET="/nonexistent/apt-get")
    assert done.returncode == 1
    assert done.stderr == ONE_LINE


def test_as_root_it_installs_what_is_missing_and_lets_no_service_start(place):
    policy = place / "policy-rc.d"
    done = run(place, listed=MISSING, APT_GET=str(fake_apt(place)), POLICY_RC_D=str(policy))
    assert done.returncode == 0, done.stderr
    calls = (place / "calls").read_text().splitlines()
    assert calls[0] == "update -qq DEBIAN_FRONTEND=noninteractive RUNLEVEL=1"
    assert calls[2] == f"install -y -qq {ABSENT} DEBIAN_FRONTEND=noninteractive RUNLEVEL=1"
    assert calls[3] == "policy says 101"  # invoke-rc.d would start nothing
    assert not policy.exists()  # ours, so removed afterwards


def test_make_test_and_ci_share_the_one_list():
    makefile = (ROOT / "Makefile").read_text()
    assert "test: system-packages install" in makefile
    assert "scripts/system-packages" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get" not in ci and "make test" in ci
    packages = [line.split()[0] for line in LIST.read_text().splitlines() if line[:1].isalnum()]
    assert {"chromium", "spamassassin", "dovecot-imapd", "postfix"} <= set(packages)
