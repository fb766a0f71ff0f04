"""Absolute URLs for the links we put in mail, each carrying its own token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailer.config import Settings
from mailer.mail.tokens import Purpose, Tokens


class Tokened(Protocol):
    """What a link token names: a subscription's id and generation. A Subscription
    row is one; the send loop passes a plain record so it needs no ORM object."""

    @property
    def id(self) -> int: ...

    @property
    def generation(self) -> int: ...


@dataclass(frozen=True)
class Links:
    base_url: str
    tokens: Tokens

    @classmethod
    def from_settings(cls, settings: Settings) -> Links:
        return cls(settings.base_url, tokens_for(settings))

    def _url(self, path: str, purpose: Purpose, sub: Tokened) -> str:
        return f"{self.base_url}/{path}/{self.tokens.make(purpose, sub.id, sub.generation)}"

    def confirm(self, sub: Tokened) -> str:
        return self._url("confirm", Purpose.CONFIRM, sub)

    def unsubscribe(self, sub: Tokened) -> str:
        return self._url("unsubscribe", Purpose.UNSUBSCRIBE, sub)

    def preferences(self, sub: Tokened) -> str:
        return self._url("preferences", Purpose.PREFERENCES, sub)

    def digest(self, digest_id: int) -> str:
        return f"{self.base_url}/digest/{digest_id}"

    def subscribe(self, newsletter_slug: str) -> str:
        return f"{self.base_url}/subscribe/{newsletter_slug}"


def tokens_for(settings: Settings) -> Tokens:
    return Tokens(settings.secret(), settings.confirm_max_age)
