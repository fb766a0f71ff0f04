"""What an edition request may be refused with, apart from the modules that raise it."""

from __future__ import annotations


class DigestError(ValueError):
    """A request about editions we refuse; the message says why."""
