"""README's Quick start, run as a newcomer runs it.

Its shell blocks are read from README.md and run verbatim with bash (`make
run` in the background, the rest in a second "terminal"), and its browser
steps are done in Chromium on the pages, links and buttons the README names
(the test first checks the README still names them). The one change: the
address 127.0.0.1:8000 becomes a free port (`make run` takes PORT from the
environment), so the test never fights another process for port 8000. The
working directory is a fresh one holding the checkout's Makefile and
virtualenv, so `var/` is the test's own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from mailer.mail.sink import free_port
from tests.browser import chromium
from tests.helpers.time import after_this_minute
from tests.helpers.up import Up, eventually, running, without_settings

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = "127.0.0.1:8000"
READER = "newcomer@example.org"
# What `make run` needs from the checkout; `var/` is made fresh in the test's directory.
CHECKOUT = ("Makefile", "pyproject.toml", ".venv", "mailer", "templates", "worker.py")


def quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M)
    assert found, "README.md has no '## Quick start' section"
    return found.group(1)


def shell_blocks(section: str) -> list[str]:
    blocks = re.findall(r"^( *)```sh\n(.*?)^\1```", section, re.S | re.M)
    return [textwrap.dedent(body) for _, body in blocks]


def commands(block: str) -> list[str]:
    """The block's commands, each with its continuation lines."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_the_readme_quick_start_works_as_written(tmp_path):
    section = quick_start()
    start, create, push = shell_blocks(section)
    assert start.strip() == "make run"
    for step in (  # the browser steps below do exactly these
        f"Open http://{ADDRESS}/subscribe/news, type your address and press **Subscribe**",
        f"Open http://{ADDRESS}/outbox, open the mail **Confirm your subscription to News**",
        "follow its `/confirm/` link and press **Confirm**",
        f"Open http://{ADDRESS}/outbox again: **News: Hello, readers** is your digest",
    ):
        assert step in " ".join(section.split()), step

    port = free_port()
    here = tmp_path / "checkout"
    here.mkdir()
    for name in CHECKOUT:
        (here / name).symlink_to(ROOT / name)
    env = without_settings() | {"PORT": str(port)}
    # make run would re-install an out-of-date virtualenv, from this directory: never here.
    stale = subprocess.run(["make", "-q", "install"], cwd=here, env=env, capture_output=True)
    if stale.returncode != 0:
        pytest.fail("the virtualenv is older than pyproject.toml: run `make install` first")
    base = f"http://127.0.0.1:{port}"

    def sh(block: str) -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.replace(ADDRESS, f"127.0.0.1:{port}")],
            cwd=here,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"$ {block}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", start],
            cwd=here,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = Up(proc, env, here, base, here / "var", log)
    with running(up), chromium() as browser:
        assert "created newsletter news" in sh(create)
        # The banner's next step runs as printed, from the shell make run was typed in.
        (suggested,) = re.findall(r"^  next +(\S+) newsletter create", up.log(), re.M)
        assert "Usage:" in sh(f"{suggested} newsletter --help")
        page = browser.new_page()

        page.goto(f"{base}/subscribe/news")
        page.get_by_label("Your email address").fill(READER)
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_load_state()
        assert "Check your inbox" in page.content()

        page.goto(f"{base}/outbox")
        eventually(
            "the confirmation in the outbox",
            lambda: _reload_until(page, "Confirm your subscription to News"),
            60,
            up,
        )
        page.get_by_role("link", name="Confirm your subscription to News").click()
        page.locator("ul.links a", has_text="/confirm/").first.click()
        page.get_by_role("button", name="Confirm").click()
        page.wait_for_load_state()
        assert "You're subscribed" in page.content(), page.content()
        # Nothing but the welcome arrives until the next edition: the page says so.
        assert "News comes with its next edition" in page.content()

        for command in commands(push):
            if "digest send" in command:
                # A person takes a while between commands; a test does not. An edition
                # sent now ends at the start of this minute: let the article's minute pass.
                after_this_minute()
            said = sh(command)
            if command.startswith("curl"):
                assert json.loads(said)["created"] == 1, said
            else:
                assert "1 to send" in said, said

        page.goto(f"{base}/outbox")
        eventually(
            "the digest in the outbox",
            lambda: _reload_until(page, "News: Hello, readers"),
            60,
            up,
        )
        page.get_by_role("link", name="News: Hello, readers").click()
        assert "Hello, readers" in page.locator("pre.text").inner_text()

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in make run's terminal
        proc.wait(timeout=60)
        assert "stopped" in up.log(), up.log()


def _reload_until(page, text: str) -> bool:
    page.reload()
    return text in page.content()


pytestmark = pytest.mark.slow
