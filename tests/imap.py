"""A real IMAP server for tests: a private Dovecot instance on a free port.

It has its own configuration, sockets, state and mail in a temporary folder
and runs in the foreground as a child of the test, so it never touches (or
needs) a system Dovecot. One user, whose mail is a Maildir; plain-text login
without TLS on 127.0.0.1, which is what `imap://` without STARTTLS does.
Reports go in with IMAP APPEND.
Dovecot's master needs root to drop to the mail user (`nobody`), as in CI.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mailer.bounces.mailboxes import _imap_quote as quoted  # the poller's own quoting
from mailer.mail.sink import free_port, port_answers

CONFIG = """\
protocols = imap
listen = {host}
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailer-test-{port}
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u
mail_uid = {user}
mail_gid = {group}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
  # No growing delay for logins after a refused one: the tests refuse one on purpose.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


MAIL_USER, MAIL_GROUP = "nobody", "nogroup"  # whom the server keeps the mail as


class DovecotUnavailable(RuntimeError):
    """Dovecot is not installed or would not start; the message says which."""


@dataclass
class ImapServer:
    host: str
    port: int
    user: str
    password: str
    root: Path
    mailbox: str = "INBOX"  # what url(), append() and messages() use unless told

    def url(self, mailbox: str | None = None, password: str | None = None) -> str:
        secret = quote(self.password if password is None else password, safe="")
        box = quote(mailbox or self.mailbox)
        return f"imap://{self.user}:{secret}@{self.host}:{self.port}/{box}"

    @contextlib.contextmanager
    def connect(self) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            conn.login(self.user, self.password)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(self, raw: bytes, mailbox: str | None = None) -> None:
        """What the MX does with a report: put it in the mailbox."""
        box = quoted(mailbox or self.mailbox)
        with self.connect() as conn:
            conn.create(box)  # a harmless "already exists" for INBOX
            typ, data = conn.append(box, None, None, raw)
            assert typ == "OK", data

    def messages(self, mailbox: str | None = None) -> list[bytes]:
        """Each message still in the mailbox, those flagged deleted but not expunged too."""
        with self.connect() as conn:
            typ, data = conn.select(quoted(mailbox or self.mailbox), readonly=True)
            assert typ == "OK", data
            _, found = conn.uid("SEARCH", "ALL")
            out = []
            for uid in found[0].split():
                _, fetched = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                out += [item[1] for item in fetched if isinstance(item, tuple)]
            return out


@contextlib.contextmanager
def start_dovecot(
    user: str = "bounces", password: str = "s3cret pass", host: str = "127.0.0.1"
) -> Iterator[ImapServer]:
    binary = shutil.which("dovecot", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        raise DovecotUnavailable("dovecot is not installed (apt-get install -y dovecot-imapd)")
    if os.geteuid() != 0:
        raise DovecotUnavailable("a private dovecot needs root, to run its mail user as nobody")
    # Short path: Dovecot's unix sockets live under base_dir, and their names have a limit.
    root = Path(tempfile.mkdtemp(prefix="dv-"))
    port = free_port()
    try:
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir()
        root.chmod(0o755)
        (root / "run").chmod(0o755)
        shutil.chown(root / "mail", MAIL_USER, MAIL_GROUP)
        (root / "users").write_text(f"{user}:{{PLAIN}}{password}\n")
        config = root / "dovecot.conf"
        config.write_text(
            CONFIG.format(root=root, port=port, user=MAIL_USER, group=MAIL_GROUP, host=host)
        )
        process = subprocess.Popen([binary, "-F", "-c", str(config)])
        try:
            deadline = time.monotonic() + 15
            while not port_answers(host, port, timeout=0.2):
                if process.poll() is not None or time.monotonic() > deadline:
                    log = root / "dovecot.log"
                    said = log.read_text()[-2000:] if log.exists() else ""
                    raise DovecotUnavailable(f"dovecot did not start on port {port}: {said}")
                time.sleep(0.05)
            yield ImapServer(host, port, user, password, root)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
