"""SpamAssassin scores every kind of mail we send, built by the real code.

Confirm and welcome come from notices.build_notice, a digest of the default
article cap from the digest context, renderer and per-reader
personalisation; all are DKIM-signed as they would go out. One local
`spamassassin --mbox` run scores them all (its start-up is the slow part),
with network tests off. Besides the total, no rule about missing or
malformed headers, MIME structure or HTML-only mail may fire: those mean a
bug in how we build mail, whatever the score.

The builders here are shared with test_rendering_browser.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid

import pytest

from mailer.editions import render, selection
from mailer.mail.dkim import sign_if_configured
from mailer.mail.links import Links
from mailer.mail.messages import Slots
from mailer.mail.rendering import EmailRenderer
from mailer.models import Frequency, Notification, Subscription
from mailer.readers import newsletters, notices
from mailer.readers import subscriptions as subs
from mailer.sending import outgoing

READER = "reader@example.com"

TITLES = [
    "City council approves new cycling lanes along the river",
    "Library extends weekend opening hours from next month",
    "Researchers map the oldest trees in the national park",
    "Local bakery wins regional award for sourdough",
    "School garden project doubles its harvest this year",
    "Night trains return to the northern line in spring",
    "Museum opens a gallery of restored maritime paintings",
    "Volunteers clean two kilometres of the old canal",
    "New footbridge links the market square and the station",
    "Community orchestra announces its autumn programme",
    "Harbour festival draws record crowds despite the rain",
    "University publishes open data on regional air quality",
]
SUMMARY = (
    "The plan was discussed at length during the evening meeting, where residents "
    "asked about timing, costs and how the work would affect daily routines. "
    "Officials said the first phase should be finished before the summer holidays, "
    "and promised a public update once the contractors have been chosen."
)


@dataclass(frozen=True)
class Sample:
    kind: str
    data: bytes


def notice(session, settings, renderer: EmailRenderer, sub: Subscription, kind: str) -> bytes:
    note = Notification(subscription_id=sub.id, kind=kind)
    session.add(note)
    session.flush()
    _, data, _ = notices.build_notice(session, settings, renderer, note)
    return data


def digest_items(count: int, now: datetime) -> list[selection.Item]:
    return [
        selection.Item(
            id=n + 1,
            url=f"https://news.example.org/articles/{n + 1}",
            title=TITLES[n % len(TITLES)],
            summary=SUMMARY,
            image_url=f"https://news.example.org/images/{n + 1}.jpg",
            author="Alex Morgan",
            published_at=now - timedelta(hours=n + 1),
            topic_ids=frozenset(),
            topics=("Local", "Culture"),
        )
        for n in range(count)
    ]


def digest(session, settings, renderer: EmailRenderer, sub: Subscription) -> tuple[str, bytes]:
    """The rendered HTML of a full digest (the default article cap), and its wire bytes."""
    now = datetime(2025, 11, 24, 8, 0, tzinfo=UTC)
    nl = sub.newsletter
    cap = settings.digest_max_articles
    items = digest_items(cap + 3, now)  # three past the cap, listed by title and link
    slots = Slots.fresh()
    context = render.context_for(
        settings,
        nl,
        items[:cap],
        items[cap:],
        Links.from_settings(settings).digest(1),
        window_end=now,
        frequency=Frequency.WEEKLY,
        slots=slots,
    )
    rendered = renderer.render(render.KIND, context)
    template = outgoing.message_template(
        settings, nl, rendered.subject, rendered.html, rendered.text, slots
    )
    links = Links.from_settings(settings)
    message_id = make_msgid(idstring="d1.1", domain=template.domain)  # as delivery does
    data = b"".join(outgoing.personalise(template, links, sub, READER, message_id))
    return rendered.html, data


def all_kinds(session, settings) -> list[Sample]:
    renderer = EmailRenderer(settings.email_templates)
    newsletters.create_newsletter(
        session,
        "weekly",
        "Weekly News",
        "Weekly News <news@example.org>",
        site_url="https://news.example.org",
    )
    subs.subscribe(session, email=READER, newsletter="weekly", topics=(), confirmed=True)
    sub = session.query(Subscription).one()
    samples = [
        Sample("confirm", notice(session, settings, renderer, sub, "confirm")),
        Sample("welcome", notice(session, settings, renderer, sub, "welcome")),
        Sample("digest", digest(session, settings, renderer, sub)[1]),
    ]
    session.rollback()
    return samples


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
