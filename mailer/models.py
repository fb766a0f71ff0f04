"""The data, as SQLAlchemy 2 typed models.

Uniqueness constraints carry the correctness rules: one subscriber per
address, one subscription per (subscriber, newsletter), one article per
(source, guid), one edition per (newsletter, frequency, window end) and one
delivery per (edition, subscription), which is the exactly-once key.

Why one module of this size: it is the schema. The tables refer to each
other (foreign keys, relationships) and the migrations are checked against
all of it at once, so it is read as one map of the store; split by table
it would need imports in a circle to say the same.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from mailer.canonical import dedupe_key


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Every id column is PostgreSQL `integer`: a larger number names no row, and must not reach
# the database, which would refuse the parameter rather than find nothing.
MAX_ID = 2**31 - 1


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Status(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class Frequency(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


class EditionStatus(enum.StrEnum):
    """An edition's life: made, its deliveries written and going out, every one answered;
    or stopped by an operator."""

    CREATED = "created"
    SENDING = "sending"
    DONE = "done"
    CANCELLED = "cancelled"


# Editions not yet finished: what an operator may still cancel, and what keeps going out.
EDITION_OPEN = (EditionStatus.CREATED, EditionStatus.SENDING)


class NoticeStatus(enum.StrEnum):
    """A confirm or welcome mail's life; `skipped` when it no longer fits the reader."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"


def _enum(cls: type[enum.StrEnum], name: str) -> Any:
    from sqlalchemy import Enum

    return Enum(
        cls, name=name, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
    )


class Newsletter(Base):
    __tablename__ = "newsletter"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    sender: Mapped[str] = mapped_column(String(320))
    site_url: Mapped[str | None] = mapped_column(String(2000))
    default_frequency: Mapped[Frequency] = mapped_column(
        _enum(Frequency, "frequency"), default=Frequency.WEEKLY
    )
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Archived: no subscriptions, no editions; every row about it is kept.
    archived_at: Mapped[datetime | None]

    topics: Mapped[list[Topic]] = relationship(back_populates="newsletter", order_by="Topic.name")


class Topic(Base):
    __tablename__ = "topic"
    __table_args__ = (UniqueConstraint("newsletter_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))

    newsletter: Mapped[Newsletter] = relationship(back_populates="topics")


class Subscriber(Base):
    """One row per address; `email_key` is the case-folded form that is unique."""

    __tablename__ = "subscriber"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    subscriptions: Mapped[list[Subscription]] = relationship(back_populates="subscriber")


class SubscriptionTopic(Base):
    __tablename__ = "subscription_topic"

    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscription.id", ondelete="CASCADE"), primary_key=True
    )
    topic_id: Mapped[int] = mapped_column(
        ForeignKey("topic.id", ondelete="CASCADE"), primary_key=True
    )


class Subscription(Base):
    __tablename__ = "subscription"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "newsletter_id"),
        Index("ix_subscription_newsletter_status", "newsletter_id", "status", "frequency"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    status: Mapped[Status] = mapped_column(_enum(Status, "subscription_status"))
    frequency: Mapped[Frequency] = mapped_column(_enum(Frequency, "frequency"))
    # Bumped on every fresh opt-in: tokens of an earlier generation stop working.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    consent_at: Mapped[datetime | None]
    consent_source: Mapped[str | None] = mapped_column(String(64))
    consent_ip: Mapped[str | None] = mapped_column(String(64))
    soft_bounces: Mapped[int] = mapped_column(Integer, default=0)

    subscriber: Mapped[Subscriber] = relationship(back_populates="subscriptions")
    newsletter: Mapped[Newsletter] = relationship()
    topics: Mapped[list[Topic]] = relationship(
        secondary="subscription_topic", order_by="Topic.name"
    )


class SubscriptionEvent(Base):
    """The consent record: every status change, when, by what and from where."""

    __tablename__ = "subscription_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscription.id", ondelete="CASCADE"), index=True
    )
    old_status: Mapped[str | None] = mapped_column(String(16))
    new_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    """Addresses never to be mailed, kept only as a hash so erasure leaves no address."""

    __tablename__ = "suppression"

    id: Mapped[int] = mapped_column(primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The address's subscriber while we still hold it: how a list shows the address.
    # Erasing the subscriber sets it NULL; the hash alone stays.
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="SET NULL"), index=True
    )


class SuppressionEvent(Base):
    """The record of each suppression lifted: what it said, when, by whom, from where."""

    __tablename__ = "suppression_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(64))
    suppressed_at: Mapped[datetime]
    at: Mapped[datetime] = mapped_column(default=utcnow)
    lifted_by: Mapped[str] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class Notification(Base):
    """A transactional mail (confirm, welcome) waiting in the database until sent.

    The web request only writes this row; a task sends it after commit, and beat
    sweeps up any whose task was lost, so no mail depends on the broker alone.
    """

    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscription.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[NoticeStatus] = mapped_column(
        _enum(NoticeStatus, "notice_status"), default=NoticeStatus.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    message_id: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)


class RateCounter(Base):
    """Fixed-window request counters shared by every web process."""

    __tablename__ = "rate_counter"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Schedule(Base):
    __tablename__ = "schedule"
    __table_args__ = (UniqueConstraint("newsletter_id", "frequency"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    frequency: Mapped[Frequency] = mapped_column(_enum(Frequency, "frequency"))
    cron: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    last_run_at: Mapped[datetime | None]


class Feed(Base):
    __tablename__ = "feed"
    __table_args__ = (UniqueConstraint("newsletter_id", "url"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    title: Mapped[str | None] = mapped_column(String(500))
    topics: Mapped[list[str]] = mapped_column(JSON, default=list)
    interval: Mapped[int] = mapped_column(Integer, default=900)
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(200))
    last_polled_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    next_poll_at: Mapped[datetime | None]
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Kept but not polled until resumed.
    paused: Mapped[bool] = mapped_column(default=False, server_default=false())
    # On the first poll, items published within this many days are due (NULL:
    # MAILER_DIGEST_MAX_AGE); older ones are stored as history and never mailed.
    backfill_days: Mapped[int | None] = mapped_column(Integer)


class ArticleTopic(Base):
    __tablename__ = "article_topic"

    article_id: Mapped[int] = mapped_column(
        ForeignKey("article.id", ondelete="CASCADE"), primary_key=True
    )
    topic_id: Mapped[int] = mapped_column(
        ForeignKey("topic.id", ondelete="CASCADE"), primary_key=True
    )


class Article(Base):
    __tablename__ = "article"
    __table_args__ = (
        UniqueConstraint("source", "guid"),
        Index("ix_article_newsletter_published", "newsletter_id", "published_at"),
        Index("ix_article_newsletter_due", "newsletter_id", "due_at"),
        Index("ix_article_newsletter_story", "newsletter_id", "story"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(100))
    guid: Mapped[str] = mapped_column(String(2000))
    url: Mapped[str] = mapped_column(String(2000))
    title: Mapped[str] = mapped_column(String(1000))
    summary: Mapped[str] = mapped_column(Text, default="")
    content_html: Mapped[str] = mapped_column(Text, default="")
    # What the source sent, before the cleaner (mailer.content.cleaner); NULL for articles stored
    # before it was kept (migration 0006), which are never cleaned again.
    raw_summary: Mapped[str | None] = mapped_column(Text)
    raw_content: Mapped[str | None] = mapped_column(Text)
    image_url: Mapped[str | None] = mapped_column(String(2000))
    author: Mapped[str | None] = mapped_column(String(300))
    published_at: Mapped[datetime]
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When it was first stored (`articles.arrival_time`, under the arrival lock): an
    # article goes in the first edition of each frequency cut after it became due.
    arrived_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When it became due: its arrival, or the moment an operator put it back
    # (`include`); NULL for history (a new feed's back catalogue), never mailed.
    due_at: Mapped[datetime | None]
    # The story whatever the spelling of its link (`canonical.dedupe_key`): a reader
    # who has it from one source is never sent it again from another.
    story: Mapped[str] = mapped_column(String(2000), default="")
    # Taken out of editions by an operator (`mailer article exclude`) until put back.
    excluded_at: Mapped[datetime | None]

    topics: Mapped[list[Topic]] = relationship(secondary="article_topic", order_by="Topic.name")

    @validates("url")
    def _story_of(self, _key: str, url: str) -> str:
        """The story key follows the link, however the row is made or changed."""
        self.story = dedupe_key(url)[:2000]
        return url


class Digest(Base):
    """One edition: a newsletter's frequency over one window of time."""

    __tablename__ = "digest"
    __table_args__ = (UniqueConstraint("newsletter_id", "frequency", "window_end"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    frequency: Mapped[Frequency] = mapped_column(_enum(Frequency, "frequency"))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    status: Mapped[EditionStatus] = mapped_column(
        _enum(EditionStatus, "edition_status"), default=EditionStatus.CREATED
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The moment the edition was cut (at prepare, under the arrival lock): it carries
    # what became due up to here; the next one of a reader carries what came after.
    cut_at: Mapped[datetime | None]
    prepared_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)

    newsletter: Mapped[Newsletter] = relationship()


class DigestVariant(Base):
    """One rendered, CSS-inlined body shared by every reader with the same articles."""

    __tablename__ = "digest_variant"
    __table_args__ = (UniqueConstraint("digest_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digest.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    article_ids: Mapped[list[int]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(String(998))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    # The secret nonce of this rendering's reader slots (`messages.Slots`): only markers
    # carrying it are filled per reader. NULL: rendered before nonces, fixed markers.
    slots: Mapped[str | None] = mapped_column(String(64))


class Delivery(Base):
    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("digest_id", "subscription_id"),
        Index("ix_delivery_status_due", "status", "next_attempt_at"),
        # The few given-up deliveries whose articles no later edition took back yet.
        Index(
            "ix_delivery_unreturned",
            "subscription_id",
            postgresql_where=sql_text("released AND NOT returned"),
            sqlite_where=sql_text("released AND NOT returned"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No index of its own: the unique (digest_id, subscription_id) index leads with
    # it, and every index here is written again on each status change (twice per
    # message sent), so a redundant one is paid for on every send.
    digest_id: Mapped[int] = mapped_column(ForeignKey("digest.id", ondelete="CASCADE"))
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscription.id", ondelete="CASCADE"), index=True
    )
    variant_id: Mapped[int | None] = mapped_column(
        ForeignKey("digest_variant.id", ondelete="CASCADE")
    )
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "delivery_status"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    smtp_code: Mapped[int | None]
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A delivery holds its variant's articles for its reader (so no later edition
    # picks them again) from prepare on, until it is given up: failed, skipped at
    # send time, or cancelled before it went. Nothing else is written per article.
    released: Mapped[bool] = mapped_column(default=False, server_default=false())
    # A released delivery's articles were given back: a later edition of the reader
    # carries them (set by that edition's prepare), so they are given back once.
    returned: Mapped[bool] = mapped_column(default=False, server_default=false())


class VariantArticle(Base):
    """Which articles a variant carries, as rows: "who already has article X" starts
    from the few variants that hold X (by this index) instead of every reader's history."""

    __tablename__ = "variant_article"
    __table_args__ = (Index("ix_variant_article_article_id", "article_id"),)

    variant_id: Mapped[int] = mapped_column(
        ForeignKey("digest_variant.id", ondelete="CASCADE"), primary_key=True
    )
    article_id: Mapped[int] = mapped_column(
        ForeignKey("article.id", ondelete="CASCADE"), primary_key=True
    )


class SendWindow(Base):
    """Token bucket state for the global send rate on backends without Redis."""

    __tablename__ = "send_window"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float, default=0.0)
    updated: Mapped[float] = mapped_column(Float, default=0.0)


class Sender(Base):
    """A send task at work on a range of an edition, and when it last said it was alive.

    A worker that dies (SIGKILL, OOM, a lost machine) stops beating; the tick
    then hands its claimed rows back and enqueues its range again, instead of
    waiting for their leases to run out (`sending.senders.reclaim_dead`).
    """

    __tablename__ = "sender"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest_id: Mapped[int] = mapped_column(Integer)
    lo: Mapped[int] = mapped_column(Integer)
    hi: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime]


class AdminSession(Base):
    """A live /admin session: the signed cookie is only good while its row is here,
    so logging out ends it on the server, not just in the browser."""

    __tablename__ = "admin_session"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime]
