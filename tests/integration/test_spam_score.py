"""SpamAssassin scores every kind of mail we send, built by the real code.

Confirm and welcome come from notices.build_notice, a digest of the default
article cap from the digest context, renderer and per-reader
personalisation; all are DKIM-signed as they would go out. One local
`spamassassin --mbox` run scores them all (its start-up is the slow part),
with network tests off. Besides the total, no rule about missing or
malformed headers, MIME structure or HTML-only mail may fire: those mean a
bug in how we build mail, whatever the score.

The builders are in tests/helpers/samples.py, shared with test_rendering_browser.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mailer.mail.dkim import sign_if_configured
from tests.helpers.samples import Sample, all_kinds

# -- scoring -------------------------------------------------------------------------------

LIMIT = 2.0
# Rules that mean we built the message wrong, whatever their score.
STRUCTURAL = re.compile(
    r"^(MISSING_\w+|\w*MALFORMED\w*|MIME_\w+|MPART_\w+|HTML_MIME_\w+|\w*HTML_ONLY\w*"
    r"|INVALID_\w+|\w*_HEADER\w*|HEADER_\w+|HDR_\w+|\w*_BAD_\w+|DATE_IN_\w+|MSGID_\w+"
    r"|FROM_\w+|TO_\w+|EMPTY_\w+|\w*LONG_LINE\w*|HTML_FONT_LOW_CONTRAST|HTML_IMAGE_\w+"
    r"|\w*_NO_TEXT\w*|\w*CHARSET\w*|SUBJ_\w+|\w*UNSUB\w*)$"
)
STATUS_RE = re.compile(
    r"^X-Spam-Status: (?:Yes|No), score=(-?[\d.]+) required=[\d.]+ tests=(.*?)\s+autolearn=",
    re.M | re.S,
)


def mbox(samples: list[Sample]) -> bytes:
    out = []
    for sample in samples:
        lines = sample.data.replace(b"\r\n", b"\n").split(b"\n")
        escaped = [b">" + line if re.match(rb">*From ", line) else line for line in lines]
        out.append(b"From mailer@example.org Mon Nov 24 08:00:00 2025\n")
        out.append(b"\n".join(escaped).rstrip(b"\n") + b"\n\n")
    return b"".join(out)


def message_id(data: bytes) -> str:
    found = re.search(rb"^Message-ID: (.+?)\r?$", data, re.M | re.I)
    assert found, "no Message-ID"
    return found.group(1).decode()


def score(samples: list[Sample]) -> dict[str, tuple[float, list[str]]]:
    """Each kind's score and rules; spamassassin may reorder an mbox, so match by Message-ID."""
    run = subprocess.run(
        ["spamassassin", "--local", "--test-mode", "--mbox"],
        input=mbox(samples),
        capture_output=True,
        timeout=240,
        check=True,
    )
    output = run.stdout.decode("utf-8", "replace")
    kinds = {message_id(s.data): s.kind for s in samples}
    results = {}
    for chunk in re.split(r"^From .*\n", output, flags=re.M):
        status = STATUS_RE.search(chunk)
        if status is None:
            continue
        kind = kinds[message_id(chunk.encode())]
        tests = [t for t in re.split(r"[,\s]+", status.group(2)) if t and t != "none"]
        results[kind] = (float(status.group(1)), tests)
    assert set(results) == set(kinds.values()), output[-3000:]
    return results


@pytest.fixture
def signed_settings(settings, tmp_path_factory, monkeypatch):
    from mailer.mail.dkim import generate_private_key
    from tests.conftest import configure

    key = tmp_path_factory.mktemp("dkim") / "mail.pem"
    generate_private_key(key)
    return configure(
        monkeypatch,
        base_url="https://news.example.org",
        dkim_selector="mail",
        dkim_private_key_path=str(key),
    )


def test_every_kind_of_mail_scores_low_and_trips_no_structural_rule(session, signed_settings):
    if shutil.which("spamassassin") is None:
        pytest.fail("spamassassin is not installed: apt-get install -y spamassassin")
    built = all_kinds(session, signed_settings)
    samples = [Sample(s.kind, sign_if_configured(signed_settings, s.data)) for s in built]
    assert all(s.data.startswith(b"DKIM-Signature:") for s in samples)

    results = score(samples)

    print(results)  # the numbers, for the record
    for kind, (points, rules) in results.items():
        assert points < LIMIT, f"{kind} scores {points}: {rules}"
        broken = [rule for rule in rules if STRUCTURAL.match(rule)]
        assert not broken, f"{kind} trips {broken}"
