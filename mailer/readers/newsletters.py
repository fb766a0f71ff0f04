"""Newsletters, their senders, topics and frequencies: what a reader can subscribe to.

Creating a newsletter and checking what an operator types for it (slug,
name, sender), the lookups every caller makes by slug, topics by slug or
name, the one reading of a frequency, and the `Offer` a subscribe request is
judged against (kept a few seconds by `Offers` in the web process). The
reader's own journey through these (subscribe, confirm, unsubscribe,
preferences, the status changes) is `readers.subscriptions`, which builds on
this module; nothing here changes a subscription.

`SubscriptionError` and its kinds live here because both halves refuse
input with them. Functions here flush but never commit.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.utils import parseaddr
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.mail.messages import UnencodableAddress, ascii_domain
from mailer.models import Frequency, Newsletter, Topic
from mailer.readers.addresses import InvalidAddress, normalise

T = TypeVar("T", bound=Hashable)


class SubscriptionError(ValueError):
    """Input we refuse; the message is for the person who gave it, `field` names the input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownNewsletter(SubscriptionError):
    pass


class NewsletterClosed(UnknownNewsletter):
    """An archived newsletter: its rows are kept, but nobody can join it."""


class NewsletterExists(SubscriptionError):
    pass


SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")
    return slug[:100] or "topic"


# -- newsletters and topics ---------------------------------------------------


def parse_sender(sender: str) -> str:
    """Validate a From value like `Name <addr@host>`; refuse header injection."""
    if any(ch in sender for ch in "\r\n\0"):
        raise SubscriptionError("The sender cannot contain line breaks.", field="sender")
    name, addr = parseaddr(sender)
    if not addr:
        raise SubscriptionError(
            f"The sender {sender!r} has no address; use 'Name <addr@host>'.", field="sender"
        )
    try:
        valid = normalise(addr)
    except InvalidAddress as exc:
        # The reader-facing wording ("That email address is not valid: ...") would stutter here.
        reason = str(exc).removeprefix("That email address is not valid: ")
        raise SubscriptionError(
            f"The sender address {addr!r} is not valid: {reason}", field="sender"
        ) from exc
    local, _, domain = valid.email.rpartition("@")
    # Every message carries the sender in From, Message-ID, List-Id and the envelope:
    # refused here if any of them could not be written, rather than failing every send.
    if not local.isascii():
        raise SubscriptionError(
            f"The sender address {valid.email!r} has a non-ASCII local part, which only "
            "relays and readers with SMTPUTF8 accept; use an ASCII one (the domain may be "
            "internationalised: it is sent as punycode).",
            field="sender",
        )
    try:
        ascii_domain(domain)
    except UnencodableAddress as exc:
        raise SubscriptionError(f"The sender address can't be sent: {exc}", field="sender") from exc
    return str(HeaderAddress(display_name=name, username=local, domain=domain))


def create_newsletter(
    session: Session,
    slug: str,
    name: str,
    sender: str,
    *,
    default_frequency: Frequency = Frequency.WEEKLY,
    site_url: str | None = None,
) -> Newsletter:
    if not SLUG_RE.match(slug):
        raise SubscriptionError(
            "A newsletter slug is 1-63 lower-case letters, digits or dashes, starting with a "
            f"letter or digit; got {slug!r}.",
            field="slug",
        )
    if find_newsletter(session, slug) is not None:
        raise NewsletterExists(f"A newsletter {slug!r} already exists.")
    newsletter = Newsletter(
        slug=slug,
        name=newsletter_name(name),
        sender=parse_sender(sender),
        default_frequency=default_frequency,
        site_url=site_url,
    )
    session.add(newsletter)
    session.flush()
    return newsletter


def newsletter_name(value: str) -> str:
    """A name goes into every Subject and List-Id: one line, and short."""
    if any(ch in value for ch in "\r\n\0") or not value.strip() or len(value.strip()) > 200:
        raise SubscriptionError(
            "The newsletter name must be one non-empty line of at most 200 characters.",
            field="name",
        )
    return value.strip()


def find_newsletter(session: Session, slug: str) -> Newsletter | None:
    """The one lookup of a newsletter by its slug (its identity everywhere outside)."""
    return session.scalar(select(Newsletter).where(Newsletter.slug == slug))


def get_newsletter(session: Session, slug: str) -> Newsletter:
    """The newsletter, or UnknownNewsletter: each caller says it in its own terms
    (a 404 page for a reader, NotFound for an operator)."""
    newsletter = find_newsletter(session, slug)
    if newsletter is None:
        raise UnknownNewsletter(f"There is no newsletter {slug!r}.", field="newsletter")
    return newsletter


def closed_message(newsletter: Newsletter) -> str:
    return f"{newsletter.name} no longer takes subscriptions."


def open_newsletter(session: Session, slug: str) -> Newsletter:
    """A newsletter someone may subscribe to: it exists and is not archived."""
    newsletter = get_newsletter(session, slug)
    if newsletter.archived_at is not None:
        raise NewsletterClosed(closed_message(newsletter), field="newsletter")
    return newsletter


def ensure_topic(session: Session, newsletter: Newsletter, name: str) -> Topic:
    """The topic of that name or slug, created on first sight."""
    name = " ".join(name.split())[:200]
    slug = slugify(name)
    topic = session.scalar(
        select(Topic).where(Topic.newsletter_id == newsletter.id, Topic.slug == slug)
    )
    if topic is None:
        topic = Topic(newsletter_id=newsletter.id, slug=slug, name=name)
        session.add(topic)
        session.flush()
    return topic


def pick_topics(by_key: Mapping[str, T], wanted: Iterable[str], newsletter_name: str) -> list[T]:
    """Topics by slug or name, case-insensitive (`by_key` maps both, casefolded);
    an unknown one is an error, not ignored."""
    wanted = [w.strip() for w in wanted if w and w.strip()]
    found: dict[T, None] = {}  # a topic asked for by slug and by name counts once
    unknown: list[str] = []
    for w in wanted:
        match = by_key.get(w.casefold())
        if match is None:
            unknown.append(w)
        else:
            found[match] = None
    if unknown:
        raise SubscriptionError(
            f"Unknown topic(s) for {newsletter_name}: {', '.join(unknown)}.", field="topics"
        )
    return list(found)


def topic_keys(topics: Iterable[Topic]) -> dict[str, Topic]:
    by_key: dict[str, Topic] = {}
    for topic in topics:
        by_key[topic.slug.casefold()] = topic
        by_key[topic.name.casefold()] = topic
    return by_key


def resolve_topics(session: Session, newsletter: Newsletter, wanted: Iterable[str]) -> list[Topic]:
    wanted = list(wanted)
    if not any(w and w.strip() for w in wanted):
        return []
    return pick_topics(topic_keys(topics_of(session, newsletter)), wanted, newsletter.name)


class HasDefaultFrequency(Protocol):
    @property
    def default_frequency(self) -> Frequency: ...


def frequency(value: str, field: str = "frequency") -> Frequency:
    """The one reading of a frequency someone typed (form, CSV, API, CLI): case and
    surrounding spaces don't matter; anything else is refused by name."""
    try:
        return Frequency(value.strip().lower())
    except ValueError as exc:
        choices = ", ".join(f.value for f in Frequency)
        raise SubscriptionError(
            f"frequency must be one of {choices}; got {value[:40]!r}", field=field
        ) from exc


def parse_frequency(value: str | None, newsletter: HasDefaultFrequency) -> Frequency:
    """A reader's choice, or the newsletter's default when they made none."""
    if value is None or value == "":
        return newsletter.default_frequency
    return frequency(value)


@dataclass(frozen=True)
class Offer:
    """What a subscribe request is judged against, the reader aside: the
    newsletter's name, default frequency and topics (their slugs, by casefolded
    slug and name). Plain data, so the web can keep it for a few seconds rather
    than ask the database on every request; the worker judges again, against
    the database, when it subscribes."""

    slug: str
    name: str
    default_frequency: Frequency
    topic_slugs: Mapping[str, str]


def offer(session: Session, slug: str) -> Offer:
    nl = open_newsletter(session, slug)
    return offer_from(nl, topics_of(session, nl))


def topics_of(session: Session, nl: Newsletter) -> Sequence[Topic]:
    return session.scalars(select(Topic).where(Topic.newsletter_id == nl.id)).all()


def offer_from(nl: Newsletter, topics: Iterable[Topic]) -> Offer:
    keys = {key: topic.slug for key, topic in topic_keys(topics).items()}
    return Offer(nl.slug, nl.name, nl.default_frequency, keys)


class Offers:
    """Each newsletter's `Offer`, kept `ttl` seconds in this process.

    A subscribe request then costs the web no database round trip at all (it
    was four: pool check, BEGIN, the lookup, ROLLBACK). A change to a
    newsletter's topics reaches the web's answers within `ttl`; the worker
    judges every request against the database anyway. An unknown newsletter
    is asked for again each time, so a new one is found at once.
    """

    def __init__(self, sessions: Callable[[], Session], ttl: float = 5.0) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self._kept: dict[str, tuple[float, Offer]] = {}
        self._lock = threading.Lock()

    def get(self, slug: str) -> Offer:
        now = time.monotonic()
        with self._lock:
            found = self._kept.get(slug)
        if found is not None and now - found[0] < self.ttl:
            return found[1]
        with self.sessions() as session:  # closing it ends the read-only transaction
            fresh = offer(session, slug)
        with self._lock:  # only newsletters that exist are kept: a handful
            self._kept[slug] = (now, fresh)
        return fresh
