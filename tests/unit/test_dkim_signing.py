"""DKIM: what we sign verifies with dkimpy against the published key, and tampering breaks it."""

from __future__ import annotations

import re
import stat

import dkim
import pytest
from click.testing import CliRunner

from mailer.config import ConfigError, Settings
from mailer.dkim_signing import (
    DKIMError,
    DKIMSigner,
    from_domain,
    generate_private_key,
    signer_for,
    txt_record_value,
)
from mailer.messages import MessageTemplate, Slot, Slots


@pytest.fixture(scope="module")
def key_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("dkim") / "mail.pem"
    generate_private_key(path)
    return path


@pytest.fixture(scope="module")
def signer(key_path):
    return DKIMSigner.from_file("mail", key_path)


@pytest.fixture(scope="module")
def dns(key_path):
    """A resolver that knows only our test key, at mail._domainkey.example.org."""
    record = txt_record_value(key_path.read_bytes()).encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == b"mail._domainkey.example.org" else None

    return lookup


def newsletter_mail(to="reader@example.com"):
    slots = Slots.fresh()
    template = MessageTemplate(
        sender="Weekly News <news@example.org>",
        subject="This week: héllo",
        html=f"<p>Hello {slots.marker(Slot.EMAIL)}</p>" + "<p>x</p>" * 500,
        text=f"Hello {slots.marker(Slot.EMAIL)}\n",
        list_id="Weekly News <weekly.example.org>",
        list_unsubscribe_mailto="news@example.org",
        slots=slots,
    )
    data, _ = template.build(
        to,
        unsubscribe_url="https://example.org/unsubscribe/tok",
        values={Slot.EMAIL: to},
    )
    return data


def signature_tags(signed: bytes) -> dict[str, str]:
    head = signed.split(b"\r\n\r\n", 1)[0].decode()
    found = re.search(r"^DKIM-Signature:(.*?)(?=\r\n\S)", head, re.S | re.M)
    assert found, "no DKIM-Signature header"
    sig = re.sub(r"\s+", "", found.group(1))
    return dict(part.split("=", 1) for part in sig.split(";") if part)


def test_a_signed_newsletter_verifies_against_the_published_key(signer, dns):
    signed = signer.sign(newsletter_mail())
    assert signed.startswith(b"DKIM-Signature: ")
    assert dkim.verify(signed, dnsfunc=dns)


def test_the_signature_covers_one_click_unsubscribe_and_oversigns_from(signer):
    tags = signature_tags(signer.sign(newsletter_mail()))
    signed = tags["h"].split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "list-id", "to", "subject"} <= set(signed)
    assert signed.count("from") == 2
    assert tags["d"] == "example.org" and tags["s"] == "mail"
    assert tags["c"] == "relaxed/relaxed"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda m: m.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b""),
            id="one-click header stripped",
        ),
        pytest.param(lambda m: b"From: Evil <evil@example.net>\r\n" + m, id="second From added"),
        pytest.param(lambda m: m.replace(b"Hello reader", b"Hello victim"), id="body changed"),
        pytest.param(lambda m: m.replace(b"Subject: ", b"Subject: URGENT "), id="subject changed"),
    ],
)
def test_tampering_with_a_signed_message_breaks_the_signature(signer, dns, tamper):
    signed = signer.sign(newsletter_mail())
    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(tamper(signed), dnsfunc=dns)


def test_a_relay_adding_an_unsubscribe_header_breaks_the_signature(signer, dns):
    template = MessageTemplate(
        sender="News <news@example.org>", subject="s", html="<p>x</p>", text="x\n"
    )
    data, _ = template.build("reader@example.com")  # a confirm mail: no unsubscribe headers
    signed = signer.sign(data)
    added = signed.replace(
        b"MIME-Version", b"List-Unsubscribe: <https://evil.example>\r\nMIME-Version", 1
    )
    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(added, dnsfunc=dns)


def test_the_signing_domain_follows_each_messages_from_address(signer):
    other = newsletter_mail().replace(b"news@example.org>", b"hello@Other.Example>", 1)
    assert from_domain(other) == "other.example"
    assert signature_tags(signer.sign(other))["d"] == "other.example"


def test_a_message_without_from_cannot_be_signed(signer):
    with pytest.raises(DKIMError, match="no From"):
        signer.sign(b"To: a@example.com\r\nSubject: x\r\n\r\nbody\r\n")


def test_a_key_that_is_not_a_key_is_refused_when_the_signer_is_built(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DKIMError, match="cannot be read"):
        DKIMSigner.from_file("mail", bad)
    with pytest.raises(DKIMError, match="cannot read"):
        DKIMSigner.from_file("mail", tmp_path / "missing.pem")


def test_signing_is_off_until_both_settings_are_given_and_half_a_setup_is_an_error(key_path):
    assert signer_for(Settings(dkim_selector="", dkim_private_key_path=None)) is None
    with pytest.raises(ConfigError, match="both"):
        signer_for(Settings(dkim_selector="mail", dkim_private_key_path=None))
    configured = signer_for(Settings(dkim_selector="mail", dkim_private_key_path=key_path))
    assert configured is not None
    assert configured is signer_for(Settings(dkim_selector="mail", dkim_private_key_path=key_path))


def test_keygen_writes_a_private_key_only_we_can_read_and_prints_a_record_that_verifies(
    tmp_path, monkeypatch
):
    from mailer.cli import main

    out = tmp_path / "keys" / "sel.pem"
    result = CliRunner().invoke(
        main, ["dkim", "keygen", "--selector", "sel", "--domain", "Example.org", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("sel._domainkey.example.org. IN TXT (")
    value = "".join(re.findall(r'"([^"]*)"', line))
    assert value.startswith("v=DKIM1; k=rsa; p=")

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if name.rstrip(b".") == b"sel._domainkey.example.org" else None

    signed = DKIMSigner.from_file("sel", out).sign(newsletter_mail())
    assert dkim.verify(signed, dnsfunc=lookup)

    again = CliRunner().invoke(main, ["dkim", "keygen", "--selector", "sel", "--out", str(out)])
    assert again.exit_code != 0 and "refusing to overwrite" in again.output


def test_openssl_signing_step_matches_dkimpys_own_byte_for_byte(key_path):
    """The RSA step runs in OpenSSL for speed; PKCS#1 v1.5 is deterministic, so the
    signature must equal dkimpy's pure-Python one exactly."""
    import hashlib

    import dkim
    from dkim.crypto import RSASSA_PKCS1_v1_5_sign as pure_python
    from dkim.crypto import parse_pem_private_key

    from mailer import dkim_signing

    assert isinstance(dkim.RSASSA_PKCS1_v1_5_sign, dkim_signing._OpenSSLRSA)
    pk = parse_pem_private_key(key_path.read_bytes())
    for algorithm in (hashlib.sha256, hashlib.sha1):
        digest = algorithm(b"a digest to sign")
        assert bytes(dkim.RSASSA_PKCS1_v1_5_sign(digest, pk)) == bytes(pure_python(digest, pk))
