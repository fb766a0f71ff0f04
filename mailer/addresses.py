"""Address validation and normalisation.

email-validator lower-cases the domain but keeps the local part as typed;
we mail the address as typed and compare on a case-folded key, so one
person is one subscriber however they capitalise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """The address can't be used; the message is meant for the person who typed it."""


@dataclass(frozen=True)
class Address:
    email: str
    key: str


MAX_LENGTH = 254


def normalise(raw: str, *, check_deliverability: bool = False) -> Address:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidAddress("Please enter an email address.")
    text = raw.strip()
    if any(ch in text for ch in "\r\n\0"):
        raise InvalidAddress("An email address cannot contain line breaks.")
    if len(text) > MAX_LENGTH:
        raise InvalidAddress("That email address is too long.")
    try:
        info = validate_email(
            text,
            check_deliverability=check_deliverability,
            allow_smtputf8=True,
            allow_quoted_local=False,
            allow_domain_literal=False,
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(f"That email address is not valid: {exc}") from exc
    return Address(email=info.normalized, key=address_key(info.normalized))


def address_key(email: str) -> str:
    return email.casefold()


def address_hash(email: str) -> str:
    """What the suppression list keeps: enough to refuse an address, not to read it."""
    return hashlib.sha256(address_key(email).encode()).hexdigest()


def redact(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"
