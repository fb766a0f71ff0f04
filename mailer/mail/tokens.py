"""Signed tokens for the links in our mail.

A token names a subscription by id and generation, never by address, and is
signed for one purpose: a confirm token cannot unsubscribe and an old
generation's token stops working once the reader opts in afresh. Confirm links
expire; unsubscribe and preference links do not, because a reader may use a
link in a year-old mail and must still be able to leave.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.serializer import Serializer


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"
    VIEW = "view"


class TokenError(ValueError):
    """A token that can't be used; `reason` is safe to show to the reader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenData:
    subscription_id: int
    generation: int


class _Signer(TimestampSigner):
    """itsdangerous' signer with its key derived once: the key is an HMAC of the
    salt and the secret, the same for every token it signs."""

    @cached_property
    def _derived(self) -> bytes:
        return super().derive_key()

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        return self._derived if secret_key is None else super().derive_key(secret_key)


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous' URL-safe timed serializer, for making tokens a digest mail
    carries two of, without the work that never changes their bytes.

    The stock one builds a signer (and derives its key) for every token, and
    tries zlib on every payload, which for `[id, generation]` is never shorter
    and costs more than the HMAC (zlib sets up its whole window for ten bytes).
    Here the signer is built once, and the payload is the stock one's whenever
    the stock one would not compress it: the same tokens, which links already
    sent and the stock `loads` both read. A payload that would compress (only
    absurdly long repetitive ids) goes out uncompressed, which `loads` reads too.
    """

    default_signer = _Signer

    @cached_property
    def _signer(self) -> Any:
        return super().make_signer(self.salt)

    def make_signer(self, salt: str | bytes | None = None) -> Any:
        return self._signer if salt is None else super().make_signer(salt)

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class Tokens:
    def __init__(self, secret: str, confirm_max_age: int) -> None:
        self._secret = secret
        self._confirm_max_age = confirm_max_age
        # itsdangerous' default digest is SHA-1 behind a Python wrapper, which sends
        # every HMAC down the `hmac` module's slow path; hashlib's own sha1 is the
        # same digest (the same tokens, old links keep working) at 4 us less a
        # token, and a digest mail carries two.
        self._serializers = {
            p: _Serializer(
                secret, salt=f"mailer.{p.value}", signer_kwargs={"digest_method": hashlib.sha1}
            )
            for p in Purpose
        }

    def make(self, purpose: Purpose, subscription_id: int, generation: int) -> str:
        return str(self._serializers[purpose].dumps([subscription_id, generation]))

    def read(self, purpose: Purpose, token: str) -> TokenData:
        max_age = self._confirm_max_age if purpose is Purpose.CONFIRM else None
        try:
            payload = self._serializers[purpose].loads(token, max_age=max_age)
        except SignatureExpired as exc:
            raise TokenError("This link has expired. Please subscribe again.") from exc
        except BadSignature as exc:
            raise TokenError("This link is not valid. It may be incomplete or changed.") from exc
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in payload)
        ):
            raise TokenError("This link is not valid. It may be incomplete or changed.")
        return TokenData(subscription_id=payload[0], generation=payload[1])
