"""DKIM signing of finished wire bytes, the last step before SMTP.

The signature covers the reader's own To header and personalised body, so it
cannot be shared across a variant: it is paid once per message. The key is
read and checked once, when the signer is built, so a bad key fails at
start-up rather than on the first send, and per message only the hashing and
the RSA operation remain. dkimpy does RSA in pure Python: with a 2048-bit
key that measured 6.2 ms of a 7.3 ms sign on these machines, which would cap
a core at ~140 signed messages a second. `_OpenSSLRSA` hands that one step
to OpenSSL through `cryptography` (0.28 ms, byte-identical output, since
PKCS#1 v1.5 signatures are deterministic) and leaves canonicalisation and
the header to dkimpy.

The header list is our own, not dkimpy's default: that leaves out
List-Unsubscribe-Post, and a one-click unsubscribe header a relay could strip
or add is worth nothing to the receivers that check it (Gmail, Yahoo).
From is signed twice (over-signed) so no second From can be added without
breaking the signature; the same holds for the other headers a forger would
want to add, which are listed even when absent.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from mailer.config import ConfigError, Settings

SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "auto-submitted",
    "feedback-id",
)
# Absent headers listed once more stop a relay from adding them after us.
OVERSIGNED: tuple[str, ...] = ("reply-to", "cc", "list-unsubscribe", "list-unsubscribe-post")

_FROM_RE = re.compile(rb"^From:[ \t]*(.*(?:\r\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


class _OpenSSLRSA:
    """dkimpy's RSASSA-PKCS1-v1_5 signing step done by OpenSSL.

    dkimpy calls a module-level function with a parsed key dict; we keep one
    OpenSSL key per modulus so the conversion is paid once per process.
    """

    def __init__(self) -> None:
        self._keys: dict[int, rsa.RSAPrivateKey] = {}

    def _key(self, pk: dict[str, int]) -> rsa.RSAPrivateKey:
        key = self._keys.get(pk["modulus"])
        if key is None:
            public = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"])
            key = rsa.RSAPrivateNumbers(
                pk["prime1"],
                pk["prime2"],
                pk["privateExponent"],
                pk["exponent1"],
                pk["exponent2"],
                pk["coefficient"],
                public,
            ).private_key()
            self._keys[pk["modulus"]] = key
        return key

    def __call__(self, hash_obj: Any, pk: dict[str, int]) -> bytes:
        algorithm = hashes.SHA256() if hash_obj.name == "sha256" else hashes.SHA1()
        return self._key(pk).sign(
            hash_obj.digest(), padding.PKCS1v15(), asym_utils.Prehashed(algorithm)
        )


dkim.RSASSA_PKCS1_v1_5_sign = _OpenSSLRSA()


class DKIMError(RuntimeError):
    """The key or the message can't be signed; the message says which and why."""


def from_domain(data: bytes) -> str:
    """The domain of the From address in a message's header block, lower-cased."""
    head = data.split(b"\r\n\r\n", 1)[0]
    match = _FROM_RE.search(head)
    if match is None:
        raise DKIMError("the message has no From header to take the signing domain from")
    value = match.group(1).replace(b"\r\n", b"").decode("utf-8", "replace")
    addresses = [addr for _, addr in getaddresses([value]) if "@" in addr]
    if not addresses:
        raise DKIMError(f"the From header {value!r} has no address")
    return addresses[0].rpartition("@")[2].strip().lower()


@dataclass(frozen=True)
class DKIMSigner:
    """A loaded key and selector; `sign` adds a DKIM-Signature for the From domain.

    The signing domain follows each message's From address, because every
    newsletter has its own sender and DMARC wants the d= domain aligned with
    From. A fixed `domain` overrides that for setups that sign with a parent
    domain.
    """

    selector: str
    private_key: bytes
    domain: str | None = None
    headers: tuple[str, ...] = SIGNED_HEADERS + OVERSIGNED

    def __post_init__(self) -> None:
        try:
            parse_pem_private_key(self.private_key)
        except (UnparsableKeyError, ValueError) as exc:
            raise DKIMError(f"the DKIM private key cannot be read: {exc}") from exc
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})", self.selector):
            raise DKIMError(f"the DKIM selector {self.selector!r} is not a DNS label")

    @classmethod
    def from_file(cls, selector: str, path: Path, domain: str | None = None) -> DKIMSigner:
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise DKIMError(f"cannot read the DKIM private key at {path}: {exc}") from exc
        return cls(selector=selector, private_key=key, domain=domain)

    def sign(self, data: bytes) -> bytes:
        """The same message with a DKIM-Signature header in front."""
        domain = self.domain or from_domain(data)
        try:
            header = dkim.sign(
                data,
                self.selector.encode("ascii"),
                domain.encode("idna"),
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[h.encode("ascii") for h in self.headers],
                linesep=b"\r\n",
            )
        except dkim.DKIMException as exc:
            raise DKIMError(f"DKIM signing failed: {exc}") from exc
        return bytes(header) + data


def signer_for(settings: Settings) -> DKIMSigner | None:
    """The process's signer, or None when DKIM is not configured."""
    if not settings.dkim_selector or not settings.dkim_private_key_path:
        if settings.dkim_selector or settings.dkim_private_key_path:
            raise ConfigError(
                "DKIM needs both MAILER_DKIM_SELECTOR and MAILER_DKIM_PRIVATE_KEY_PATH"
            )
        return None
    try:
        return _cached_signer(settings.dkim_selector, str(settings.dkim_private_key_path))
    except DKIMError as exc:
        raise ConfigError(str(exc)) from exc


@lru_cache(maxsize=4)
def _cached_signer(selector: str, path: str) -> DKIMSigner:
    return DKIMSigner.from_file(selector, Path(path))


def sign_if_configured(settings: Settings, data: bytes) -> bytes:
    """Sign when MAILER_DKIM_* are set; otherwise the bytes go out as they are."""
    signer = signer_for(settings)
    return signer.sign(data) if signer else data


# -- keys and the DNS record ---------------------------------------------------------


def generate_private_key(path: Path, bits: int = 2048) -> None:
    """Write a new RSA key (PEM, mode 0600) with the system's openssl, as dkimpy's dknewkey does.

    The file is created 0600 before any key byte is written, so the key is
    never readable by others, not even for a moment.
    """
    if path.exists():
        raise DKIMError(f"{path} exists; refusing to overwrite a key that may be published")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pem = subprocess.run(
            ["openssl", "genrsa", str(bits)], check=True, capture_output=True, timeout=120
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DKIMError(f"openssl could not generate a key: {exc}") from exc
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def public_key_b64(private_key: bytes) -> str:
    """The SubjectPublicKeyInfo of a private key, base64, as the p= tag wants it."""
    try:
        der = subprocess.run(
            ["openssl", "pkey", "-pubout", "-outform", "DER"],
            input=private_key,
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DKIMError(f"openssl could not read the key: {exc}") from exc
    return base64.b64encode(der).decode("ascii")


def txt_record_value(private_key: bytes) -> str:
    return f"v=DKIM1; k=rsa; p={public_key_b64(private_key)}"


def dns_record(selector: str, domain: str, private_key: bytes) -> str:
    """The zone-file line to publish; long values split into 255-octet strings."""
    value = txt_record_value(private_key)
    chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"
