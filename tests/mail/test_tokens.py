import base64
import hashlib
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer

from mailer.mail.tokens import Purpose, TokenError, Tokens

tokens = Tokens("secret-one", confirm_max_age=3600)


def test_token_round_trips_subscription_and_generation():
    token = tokens.make(Purpose.UNSUBSCRIBE, 42, 3)
    data = tokens.read(Purpose.UNSUBSCRIBE, token)
    assert (data.subscription_id, data.generation) == (42, 3)


def test_token_does_not_reveal_an_address():
    token = tokens.make(Purpose.CONFIRM, 7, 1)
    payload = token.split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert decoded == b"[7,1]"


def flip(token: str, i: int) -> str:
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: flip(t, 1),
        lambda t: flip(t, len(t) - 5),
        lambda t: t[: len(t) // 2],
        lambda t: "x" + t,
        lambda t: "",
    ],
)
def test_tampered_or_truncated_token_is_refused(mangle):
    token = tokens.make(Purpose.UNSUBSCRIBE, 1, 1)
    with pytest.raises(TokenError):
        tokens.read(Purpose.UNSUBSCRIBE, mangle(token))


def test_token_for_one_purpose_is_refused_for_another():
    token = tokens.make(Purpose.CONFIRM, 1, 1)
    with pytest.raises(TokenError):
        tokens.read(Purpose.UNSUBSCRIBE, token)
    with pytest.raises(TokenError):
        tokens.read(Purpose.PREFERENCES, token)


def test_token_signed_with_another_key_is_refused():
    other = Tokens("secret-two", confirm_max_age=3600)
    with pytest.raises(TokenError):
        tokens.read(Purpose.UNSUBSCRIBE, other.make(Purpose.UNSUBSCRIBE, 1, 1))


def test_confirm_token_expires(monkeypatch):
    token = tokens.make(Purpose.CONFIRM, 1, 1)
    import itsdangerous.timed

    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(
        itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: real(self) + 3601
    )
    with pytest.raises(TokenError, match="expired"):
        tokens.read(Purpose.CONFIRM, token)


def test_unsubscribe_token_never_expires(monkeypatch):
    token = tokens.make(Purpose.UNSUBSCRIBE, 5, 1)
    import itsdangerous.timed

    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(
        itsdangerous.timed.TimestampSigner,
        "get_timestamp",
        lambda self: real(self) + 10 * 365 * 86400,
    )
    assert tokens.read(Purpose.UNSUBSCRIBE, token).subscription_id == 5


def test_validly_signed_payload_of_wrong_shape_is_refused():
    forged = URLSafeTimedSerializer("secret-one", salt="mailer.unsubscribe").dumps({"id": 1})
    with pytest.raises(TokenError):
        tokens.read(Purpose.UNSUBSCRIBE, str(forged))


def test_tokens_are_itsdangerous_defaults_so_links_already_sent_keep_working(monkeypatch):
    """The faster SHA-1 is the same digest: a link minted before the change reads the same."""
    monkeypatch.setattr("time.time", lambda: 1_700_000_000)
    tokens = Tokens("k" * 32, 3600)
    plain = URLSafeTimedSerializer("k" * 32, salt="mailer.unsubscribe")
    assert tokens.make(Purpose.UNSUBSCRIBE, 42, 3) == plain.dumps([42, 3])
    assert tokens.read(Purpose.UNSUBSCRIBE, plain.dumps([42, 3])).subscription_id == 42


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    purpose=st.sampled_from(list(Purpose)),
    subscription_id=st.one_of(st.integers(1, 10**7), st.integers(1, 2**63 - 1)),
    generation=st.one_of(st.integers(1, 50), st.integers(1, 2**63 - 1)),
)
def test_tokens_are_the_stock_serializers_bytes_and_read_by_it(
    purpose, subscription_id, generation
):
    """Tokens are made without the stock serializer's per-token signer and zlib attempt:
    the bytes are its own whenever it would not compress (every real id), and what it
    would have compressed is still read by it."""
    stock = URLSafeTimedSerializer(
        "k" * 32, salt=f"mailer.{purpose.value}", signer_kwargs={"digest_method": hashlib.sha1}
    )
    ours = Tokens("k" * 32, 3600)
    with mock.patch("time.time", lambda: 1_700_000_000):
        token = ours.make(purpose, subscription_id, generation)
        expected = stock.dumps([subscription_id, generation])
        assert stock.loads(token) == [subscription_id, generation]
        read = ours.read(purpose, token)
    if not expected.startswith("."):  # "." marks a compressed payload
        assert token == expected
    assert (read.subscription_id, read.generation) == (subscription_id, generation)
