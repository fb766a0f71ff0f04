"""Address validation and normalisation.

email-validator lower-cases the domain but keeps the local part as typed;
we mail the address as typed and compare on a case-folded key, so one
person is one subscriber however they capitalise.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, EmailSyntaxError, validate_email


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
    if "\n" in text or "\r" in text or "\0" in text:
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


# -- bulk validation: the domain step memoised, the plain split taken directly -----------

DOMAIN_CACHE_SIZE = 10_000

# The per-domain cache of the normaliser running in this context, or None (plain normalise).
_ACTIVE: ContextVar[dict[tuple[Any, ...], dict[str, Any] | str] | None] = ContextVar(
    "domain_cache", default=None
)
_MODULE = "email_validator.validate_email"  # where validate_email looks its steps up
_DOMAIN_STEP = "validate_email_domain_name"
_SPLIT_STEP = "split_email"
_HOOK_LOCK = threading.Lock()
_hooked: dict[str, bool] = {}

Step = Callable[..., Any]


def _hook(name: str, wrap: Callable[[Step], Step]) -> bool:
    """Route email-validator's step `name` through `wrap(original)`; False if it can't be.

    email-validator does not export its steps (`split_email` and
    `validate_email_domain_name` live in `email_validator.syntax`, outside
    `__all__`) nor a way to run `validate_email` on parts of an address, so the
    only way to reuse them is to wrap the names `validate_email` calls. Each
    wrapper calls the original unless a `CachedNormaliser` is running in this
    context, so plain `normalise` behaves exactly as before. If a release
    moves a step, its hook is not installed and that step just runs in full.
    """
    with _HOOK_LOCK:
        if name not in _hooked:
            module = importlib.import_module(_MODULE)
            original = getattr(module, name, None)
            if callable(original):
                setattr(module, name, wrap(original))
            _hooked[name] = callable(original)
        return _hooked[name]


def _cached_domain_step(original: Step) -> Step:
    def domain_step(
        domain: str, test_environment: bool = False, globally_deliverable: bool = True
    ) -> Any:
        cache = _ACTIVE.get()
        if cache is None:
            return original(domain, test_environment, globally_deliverable)
        key = (domain, test_environment, globally_deliverable)
        found = cache.get(key)
        if found is None:
            try:
                found = dict(original(domain, test_environment, globally_deliverable))
            except EmailSyntaxError as exc:
                found = str(exc)
            if len(cache) >= DOMAIN_CACHE_SIZE:
                cache.clear()  # bounded: memory stays flat however many domains a file has
            cache[key] = found
        if isinstance(found, str):
            raise EmailSyntaxError(found)
        return dict(found)  # a copy: the caller may keep or change what it gets

    return domain_step


def plain_split(email: str) -> tuple[None, str, str, bool, str] | None:
    """`split_email`'s answer for an address of the everyday shape, or None to ask it.

    `split_email` walks the address a character at a time (NFC-normalising a
    window at each one, to see whether a combining mark follows) looking for
    the first @ or < outside quotes: about 40% of a bulk validation. For
    ASCII (which NFC leaves unchanged, so nothing combines) with no quote, no
    < and one @, that walk ends at the @ with no display name and nothing to
    unquote: the answer is the two sides of the @. Anything else goes to
    `split_email`, errors and their wording included.
    """
    if email.isascii() and email.count("@") == 1 and '"' not in email and "<" not in email:
        local, _, domain = email.partition("@")
        return None, local, local, False, domain
    return None


def _direct_split_step(original: Step) -> Step:
    def split_step(email: str) -> Any:
        if _ACTIVE.get() is not None:
            found = plain_split(email)
            if found is not None:
                return found
        return original(email)

    return split_step


class CachedNormaliser:
    """`normalise` for many addresses at once (the CSV import), same answers, faster.

    email-validator's check of the part after the @ is about two thirds of its
    time per address (UTS-46 mapping and IDNA round trips), and a list has few
    distinct domains. This runs the full `validate_email` on every address
    (email-validator stays the judge of each one, including the whole-address
    length and the order of its complaints) but remembers its verdict on each
    domain, valid or not: an invalid domain is refused again on every row with
    the same message. The verdict depends only on the domain and the options
    (and on email-validator's module-level special-use list, which nothing here
    changes during a run). At most DOMAIN_CACHE_SIZE domains are kept. An
    everyday address is also split at its @ directly (`plain_split`).
    """

    def __init__(self) -> None:
        # Empty for good if the domain step can't be hooked; set, it also turns the split on.
        self.cache: dict[tuple[Any, ...], dict[str, Any] | str] = {}
        _hook(_DOMAIN_STEP, _cached_domain_step)
        _hook(_SPLIT_STEP, _direct_split_step)

    def __call__(self, raw: str) -> Address:
        token = _ACTIVE.set(self.cache)
        try:
            return normalise(raw)
        finally:
            _ACTIVE.reset(token)


def address_key(email: str) -> str:
    return email.casefold()


def address_hash(email: str) -> str:
    """What the suppression list keeps: enough to refuse an address, not to read it."""
    return hashlib.sha256(address_key(email).encode()).hexdigest()
