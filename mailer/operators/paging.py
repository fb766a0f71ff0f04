"""Ids and page cursors as they arrive in URLs and query strings.

Subscribers, suppressions and editions page the same way (an opaque cursor
holding the last id seen), and an id is read the same way everywhere, so a
"²" or an id past the column's range is refused alike.
"""

from __future__ import annotations

import base64
import binascii

from mailer.models import MAX_ID
from mailer.operators.errors import Invalid


def parse_id(text: str) -> int | None:
    """An id as written in a URL: ASCII digits only ("²" is a digit to str.isdigit
    but not to int()), within the column's range; anything else is None."""
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= MAX_ID else None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"s1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        last_id = parse_id(number)
        if prefix != "s1" or last_id is None:
            raise ValueError(raw)
        return last_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise Invalid(
            "cursor", "The cursor is not one this API gave out; start without one."
        ) from exc
