"""The raw limit: plain smtplib sending pre-built bytes, one process per connection.

The pipeline is compared with this loop in the same run: the same recipients,
one real personalised digest per variant (so the same mix of sizes), the
same number of connections, nothing signed or recorded.

With `sign`, each message is signed with mailer's own `DKIMSigner` just
before it goes, from the parts it is joined from as the workers sign it, and
nothing else is added: the raw limit once every message must be signed. Its
rate over the unsigned loop's says how much of the pipeline's ratio with
DKIM on the signature alone takes.
"""

from __future__ import annotations

import multiprocessing as mp
import smtplib
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

# A key to sign with: the DKIM selector and the private key's file.
Signing = tuple[str, Path]


def _raw_sender(
    host: str,
    port: int,
    sender: str,
    recipients: list[tuple[str, int]],
    bodies: list[list[bytes]],
    sign: Signing | None,
    go: Event,
    done: Any,
) -> None:
    conn = smtplib.SMTP(host, port, timeout=60)
    conn.ehlo()
    done.put("connected")
    if sign is None:
        joined = [b"".join(parts) for parts in bodies]
        go.wait()
        for rcpt, body in recipients:
            conn.sendmail(sender, [rcpt], joined[body])
    else:
        from mailer.mail.dkim import DKIMSigner

        signer = DKIMSigner.from_file(*sign)
        go.wait()
        for rcpt, body in recipients:
            conn.sendmail(sender, [rcpt], signer.sign(bodies[body]))
    conn.quit()
    done.put(time.perf_counter())


def raw_rate(
    host: str,
    port: int,
    sender: str,
    recipients: list[tuple[str, int]],
    bodies: list[list[bytes]],
    conns: int,
    sign: Signing | None = None,
) -> float:
    """Messages/s of plain smtplib over `conns` connections, one process each; with
    `sign`, each message signed on the way."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    done = ctx.Queue()
    shares = [recipients[i::conns] for i in range(conns)]
    procs = [
        ctx.Process(target=_raw_sender, args=(host, port, sender, share, bodies, sign, go, done))
        for share in shares
    ]
    for p in procs:
        p.start()
    for _ in procs:
        done.get(timeout=60)
    started = time.perf_counter()
    go.set()
    ends = [done.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return len(recipients) / (max(ends) - started)


def raw_messages(url: str, digest_id: int) -> tuple[list[tuple[str, int]], list[list[bytes]]]:
    """Each recipient with the index of its variant's message: one real personalised
    digest per variant, in the parts it is joined from, so the raw loop sends the
    pipeline's mix of sizes."""
    from sqlalchemy import func, select

    from mailer import db
    from mailer.config import get_settings
    from mailer.mail.links import Links
    from mailer.models import (
        Delivery,
        DeliveryStatus,
        Digest,
        DigestVariant,
        Newsletter,
        Subscriber,
        Subscription,
    )
    from mailer.sending.outgoing import personalise, variant_template

    settings = get_settings()
    links = Links.from_settings(settings)
    with db.session_scope(url) as session:
        digest = session.get_one(Digest, digest_id)
        nl = session.get_one(Newsletter, digest.newsletter_id)
        bodies: list[list[bytes]] = []
        index: dict[int, int] = {}
        for vid, sub_id in session.execute(
            select(Delivery.variant_id, func.min(Delivery.subscription_id))
            .where(Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.SENT)
            .group_by(Delivery.variant_id)
        ):
            assert vid is not None  # a sent row always has its variant
            variant = session.get_one(DigestVariant, vid)
            sub = session.get_one(Subscription, sub_id)
            template = variant_template(settings, nl, variant)
            index[vid] = len(bodies)
            bodies.append(personalise(template, links, sub, sub.subscriber.email, "<raw@bench>"))
        recipients = [
            (address, index[vid or 0])
            for address, vid in session.execute(
                select(Subscriber.email, Delivery.variant_id)
                .join(Subscription, Subscription.id == Delivery.subscription_id)
                .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                .where(Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.SENT)
                .order_by(Delivery.id)
            )
        ]
    return recipients, bodies
