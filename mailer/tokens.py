"""Signed tokens for the links in our mail.

A token names a subscription by id and generation, never by address, and is
signed for one purpose: a confirm token cannot unsubscribe and an old
generation's token stops working once the reader opts in afresh. Confirm links
expire; unsubscribe and preference links do not, because a reader may use a
link in a year-old mail and must still be able to leave.
"""

from __future__ import annotations

import enum
import hmac
import time
import zlib
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes, want_bytes
from itsdangerous.signer import HMACAlgorithm


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


class Tokens:
    def __init__(self, secret: str, confirm_max_age: int) -> None:
        self._secret = secret
        self._confirm_max_age = confirm_max_age
        self._serializers = {
            p: URLSafeTimedSerializer(secret, salt=f"mailer.{p.value}") for p in Purpose
        }
        self._macs: dict[Purpose, tuple[Any, bytes]] = {}
        for purpose, serializer in self._serializers.items():
            signer = serializer.make_signer()
            if isinstance(signer.algorithm, HMACAlgorithm):
                mac = hmac.new(signer.derive_key(), digestmod=signer.algorithm.digest_method)
                self._macs[purpose] = (mac, want_bytes(signer.sep))

    def make(self, purpose: Purpose, subscription_id: int, generation: int) -> str:
        """Exactly `URLSafeTimedSerializer.dumps` (same bytes, any itsdangerous reads it).

        Two of these go into every digest; `dumps` builds a signer, derives
        its key and sets up an HMAC per call. Here the keyed HMAC is made
        once per purpose and copied, which is the same computation.
        """
        serializer = self._serializers[purpose]
        fast = self._macs.get(purpose)
        if fast is None:
            return str(serializer.dumps([subscription_id, generation]))
        mac, sep = fast
        value = self._payload(serializer, subscription_id, generation)
        value += sep + base64_encode(int_to_bytes(int(time.time())))
        signature = mac.copy()
        signature.update(value)
        return (value + sep + base64_encode(signature.digest())).decode("ascii")

    @staticmethod
    def _payload(
        serializer: URLSafeTimedSerializer, subscription_id: int, generation: int
    ) -> bytes:
        """`dump_payload([id, generation])`: compact JSON of two ints is just this
        text; zlib is still asked, as itsdangerous does, in case it would shrink it."""
        if type(subscription_id) is not int or type(generation) is not int:
            return serializer.dump_payload([subscription_id, generation])
        text = f"[{subscription_id},{generation}]".encode("ascii")
        if len(zlib.compress(text)) < len(text) - 1:
            return serializer.dump_payload([subscription_id, generation])
        return base64_encode(text)

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
