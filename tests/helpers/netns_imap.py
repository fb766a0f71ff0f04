"""Inside a namespace of its own (tests/helpers/netns.py): a Dovecot bounce mailbox without
TLS on a given address, one report in it, and our poll of it with the mailbox's password.
Prints what came of it as JSON: the poll's error, and whether the report is still there."""

from __future__ import annotations

import json
import sys

from mailer.bounces import mailboxes, outcomes
from tests.fixtures import bounces as reports
from tests.imap import start_dovecot


def main(address: str) -> None:
    with start_dovecot(host=address) as imap:
        imap.append(reports.load("postfix_hard", recipient="reader@example.org"))
        out: dict[str, object] = {}
        try:
            result = mailboxes.poll_imap(
                imap.url(), lambda raw: outcomes.Outcome("ignored", "a test")
            )
            out["poll"] = f"read {result.seen}"
        except ValueError as exc:
            out["poll"] = str(exc)
        out["left"] = len(imap.messages())
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
