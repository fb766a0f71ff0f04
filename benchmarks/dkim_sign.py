"""DKIM signing per message: our signer against dkimpy's `dkim.sign` and RSA alone.

    .venv/bin/python -m benchmarks.dkim_sign --articles 5,10 --messages 300

The messages are real digests as the send benchmark's readers get them
(the digest templates rendered with its articles, CSS inlined, personalised
per reader), at two sizes: 5 articles make ~12 KB, 10 (the most a digest
holds) ~20 KB. For each size it measures CPU time per message (process
time, the fastest of `--rounds` rounds, so other work on a shared machine
counts as little as it can) of:

- `DKIMSigner.sign` given the message's parts, what the workers run, and
  given the joined bytes (what a notice or any other caller gets);
- `dkim.sign` as the signer called it before (dkimpy's canonicalisation and
  hashing, its RSA step handed to OpenSSL);
- RSA-2048 alone in OpenSSL over a header block's worth of bytes: the floor
  no signer can go under, and the figure that says how busy the machine
  was (`openssl speed rsa2048` gives 0.26 ms on a quiet one).

Every signature made is checked first: ours equal to dkimpy's byte for byte
at the same time, and verified by `dkim.verify`. The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.config import Settings
from mailer.mail.dkim import DKIMSigner, generate_private_key, load_private_key, public_key_b64

SENDER = "The Bench <news@news.example.org>"
SELECTOR = "bench"
WHEN = datetime(2026, 12, 3, 6, tzinfo=UTC)


def digest_messages(articles: int, readers: int, data_dir: Path) -> list[list[bytes]]:
    """`readers` personalised messages of one digest variant with `articles` articles
    (the articles and layout of benchmarks/send.py's edition), each as the parts the
    workers hand the signer; joined, they are the wire bytes."""
    from mailer.editions.render import KIND, context_for
    from mailer.editions.selection import Item
    from mailer.mail.links import Links
    from mailer.mail.messages import Slots
    from mailer.mail.rendering import EmailRenderer
    from mailer.models import Frequency, Newsletter
    from mailer.sending.claims import Reader
    from mailer.sending.outgoing import message_template, personalise

    settings = Settings(
        secret_key="bench-secret", base_url="https://news.example.org", data_dir=data_dir
    )
    newsletter = Newsletter(
        id=1, slug="bench", name="The Bench", sender=SENDER, site_url="https://news.example.org"
    )
    items = [
        Item(
            i,
            f"https://news.example.org/2024/story-{i}",
            f"Story {i}: what happened in the {i}th hour",
            (f"A summary of story {i}, long enough to look like one. " * 6).strip(),
            None,
            "A. Writer",
            WHEN - timedelta(hours=i),
            frozenset({1}),
            ("a",),
        )
        for i in range(articles)
    ]
    slots = Slots.fresh()
    context = context_for(
        settings,
        newsletter,
        items,
        (),
        "https://news.example.org/digest/1?v=k",
        window_end=WHEN,
        frequency=Frequency.DAILY,
        slots=slots,
    )
    rendered = EmailRenderer(settings.email_templates).render(KIND, context)
    template = message_template(
        settings, newsletter, rendered.subject, rendered.html, rendered.text, slots
    )
    links = Links.from_settings(settings)
    return [
        personalise(
            template,
            links,
            Reader(i, 1),
            f"reader{i:06d}@bench.example.org",
            f"<d1.{i}@news.example.org>",
        )
        for i in range(readers)
    ]


@contextlib.contextmanager
def dkimpy_as_before() -> Iterator[None]:
    """dkimpy's `dkim.sign` with its RSA step in OpenSSL, as the signer ran before:
    dkimpy calls a module-level function with its parsed key."""
    keys: dict[int, Any] = {}

    def rsa_sign(hash_obj: Any, pk: dict[str, int]) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import utils as asym_utils

        key = keys.get(pk["modulus"])
        if key is None:
            public = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"])
            key = keys[pk["modulus"]] = rsa.RSAPrivateNumbers(
                pk["prime1"], pk["prime2"], pk["privateExponent"], pk["exponent1"],
                pk["exponent2"], pk["coefficient"], public,
            ).private_key()  # fmt: skip
        return bytes(
            key.sign(hash_obj.digest(), padding.PKCS1v15(), asym_utils.Prehashed(hashes.SHA256()))
        )

    with mock.patch.object(dkim, "RSASSA_PKCS1_v1_5_sign", rsa_sign):
        yield


def dkimpy_sign(signer: DKIMSigner, data: bytes, domain: bytes, now: int | None = None) -> bytes:
    """dkimpy's whole signature for what `signer` signs, at `now` (the clock when None)."""
    with contextlib.ExitStack() as stack:
        if now is not None:
            stack.enter_context(mock.patch.object(dkim.time, "time", lambda: float(now)))
        header = dkim.sign(
            data,
            signer.selector.encode("ascii"),
            domain,
            signer.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode("ascii") for h in signer.headers],
            linesep=b"\r\n",
        )
    return bytes(header) + data


def rsa_alone(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """The RSA step over the message's header block (about what a signature covers)."""
    return key.sign(data[: data.find(b"\r\n\r\n")], padding.PKCS1v15(), hashes.SHA256())


def cpu_per_call(
    runs: dict[str, tuple[Callable[[Any], object], Sequence[Any]]], rounds: int
) -> dict[str, float]:
    """Milliseconds of process CPU per call of each function over its inputs, the
    fastest of `rounds` rounds; the functions take turns within a round, so a busy
    spell of the machine falls on all of them rather than on one."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, (fn, inputs) in runs.items():
            started = time.process_time()
            for item in inputs:
                fn(item)
            best[name] = min(best[name], (time.process_time() - started) / len(inputs))
    return {name: 1000 * seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--articles", default="5,10", help="digest sizes, comma-separated")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mailer-dkim-bench-"))
    key_path = work / "bench.pem"
    generate_private_key(key_path)
    signer = DKIMSigner.from_file(SELECTOR, key_path)
    record = f"v=DKIM1; k=rsa; p={public_key_b64(signer.private_key)}".encode()

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == b"bench._domainkey.news.example.org" else None

    rsa_key = load_private_key(signer.private_key)
    results = []
    for articles in (int(a) for a in args.articles.split(",")):
        messages = digest_messages(articles, args.messages, work)
        joined = [b"".join(parts) for parts in messages]
        now = int(time.time())
        for parts, data in list(zip(messages, joined, strict=True))[:3]:
            ours = signer.sign(parts, now=now)
            assert ours == signer.sign(data, now=now), "the parts sign differently"
            assert ours == dkimpy_sign(signer, data, b"news.example.org", now), "not dkimpy's"
            assert dkim.verify(ours, dnsfunc=dns), "our signature does not verify"
        with dkimpy_as_before():
            ms = cpu_per_call(
                {
                    "rsa": (partial(rsa_alone, rsa_key), joined),
                    "ours": (signer.sign, messages),
                    "bytes": (signer.sign, joined),
                    "dkimpy": (partial(dkimpy_sign, signer, domain=b"news.example.org"), joined),
                },
                args.rounds,
            )
        ours_ms, bytes_ms, before_ms, rsa_ms = ms["ours"], ms["bytes"], ms["dkimpy"], ms["rsa"]
        size = sum(map(len, joined)) // len(joined)
        print(
            f"{articles} articles, {size} bytes: DKIMSigner.sign {ours_ms:.3f} ms "
            f"(given the joined bytes {bytes_ms:.3f}), dkim.sign (RSA in OpenSSL) "
            f"{before_ms:.3f} ms, RSA-2048 alone {rsa_ms:.3f} ms; "
            f"ours = {ours_ms / rsa_ms:.2f}x RSA alone, {before_ms / ours_ms:.1f}x faster",
            flush=True,
        )
        results.append(
            {
                "articles": articles,
                "bytes": size,
                "sign_ms": round(ours_ms, 3),
                "sign_bytes_ms": round(bytes_ms, 3),
                "dkimpy_ms": round(before_ms, 3),
                "rsa_ms": round(rsa_ms, 3),
                "sign_over_rsa": round(ours_ms / rsa_ms, 2),
            }
        )
    print(json.dumps({"messages": args.messages, "sizes": results}), flush=True)


if __name__ == "__main__":
    main()
