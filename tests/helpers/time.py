"""Waiting on the wall clock, where the product counts in whole minutes."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def after_this_minute(margin: float = 1.0) -> None:
    """Sleep into the next minute: an edition sent now ends at this minute's start, so an
    article that arrived within this minute would belong to the next edition."""
    now = datetime.now(UTC)
    time.sleep(60 - now.second - now.microsecond / 1e6 + margin)
