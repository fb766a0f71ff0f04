"""The operator JSON API under /api: bearer MAILER_API_TOKEN on every route.

Routes are thin: parse, call one `operators` function, commit. Errors are
JSON a person can act on: 404 names what was not found, 409 what is in the
way, 422 names the field (`{"detail": [{"loc": ["body", field], "msg": …}]}`,
the same shape FastAPI uses for its own validation errors).

The token is checked before anything else, body parsing included, so a
caller without it learns nothing but 401. Subscribers may be named by id or
by address; ids keep addresses out of URLs and access logs.
Editions and deliveries are in editions.py, articles in articles.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from mailer.models import Frequency, Newsletter, Status
from mailer.operators import feeds as feeds_ops
from mailer.operators import newsletters as newsletters_ops
from mailer.operators import schedules as schedules_ops
from mailer.operators import stats as stats_ops
from mailer.operators import subscribers as subscribers_ops
from mailer.operators import suppressions as suppressions_ops
from mailer.operators.errors import Conflict, Invalid, NotFound
from mailer.operators.feeds import FeedOut
from mailer.operators.newsletters import NewsletterOut, TopicOut
from mailer.operators.schedules import ScheduleOut
from mailer.operators.stats import NewsletterStats
from mailer.operators.subscribers import (
    ErasureReport,
    SubscriberExport,
    SubscriberOut,
    SubscriberPage,
    SubscriptionOut,
)
from mailer.operators.suppressions import LiftOut, SuppressionPage
from mailer.web.deps import APIAuth, IPDep, SessionDep, SettingsDep, _bearer, require_api_token


def _invalid(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


class OperatorRoute(APIRoute):
    """Token first, then the handler; domain refusals become 404/409/422 JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            await require_api_token(request, await _bearer(request))
            try:
                return await handler(request)
            except NotFound as exc:
                return JSONResponse({"detail": str(exc)}, status_code=404)
            except Conflict as exc:
                return JSONResponse({"detail": str(exc)}, status_code=409)
            except Invalid as exc:
                return _invalid(exc.field, str(exc))

        return route


router = APIRouter(
    prefix="/api",
    dependencies=[APIAuth],
    route_class=OperatorRoute,
    tags=["operator"],
    responses={
        400: {"description": "The body is not valid JSON"},
        401: {"description": "Missing or wrong API token"},
        422: {"description": "A field is wrong; `detail[0].loc` names it"},
    },
)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "Conflicts with what is there"}}


def _done(session: Session) -> None:
    session.commit()


# -- newsletters ----------------------------------------------------------------------------


class NewsletterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", examples=["weekly-news"])
    name: str = Field(min_length=1, max_length=200)
    sender: str = Field(min_length=3, max_length=320, examples=["Weekly <news@example.org>"])
    site_url: str | None = Field(None, max_length=2000)
    default_frequency: Frequency = Frequency.WEEKLY


class NewsletterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    sender: str | None = Field(None, min_length=3, max_length=320)
    site_url: str | None = Field(None, max_length=2000)
    default_frequency: Frequency | None = None


@router.get("/newsletters", response_model=list[NewsletterOut])
def list_newsletters(session: SessionDep) -> Any:
    return newsletters_ops.newsletters_out(session)


@router.post("/newsletters", status_code=201, response_model=NewsletterOut, responses=CONFLICT)
def create_newsletter(body: NewsletterIn, session: SessionDep) -> Any:
    nl = newsletters_ops.create_newsletter(
        session,
        body.slug,
        body.name,
        body.sender,
        default_frequency=body.default_frequency,
        site_url=body.site_url,
    )
    out = newsletters_ops.newsletter_out(session, nl)
    _done(session)
    return out


@router.get("/newsletters/{slug}", response_model=NewsletterOut, responses=NOT_FOUND)
def get_newsletter(slug: str, session: SessionDep) -> Any:
    return newsletters_ops.newsletter_out(session, newsletters_ops.newsletter(session, slug))


@router.patch("/newsletters/{slug}", response_model=NewsletterOut, responses=NOT_FOUND)
def update_newsletter(slug: str, body: NewsletterPatch, session: SessionDep) -> Any:
    nl = newsletters_ops.update_newsletter(session, slug, **body.model_dump(exclude_unset=True))
    return _newsletter_done(session, nl)


def _newsletter_done(session: Session, nl: Newsletter) -> NewsletterOut:
    out = newsletters_ops.newsletter_out(session, nl)
    _done(session)
    return out


@router.post("/newsletters/{slug}/pause", response_model=NewsletterOut, responses=NOT_FOUND)
def pause_newsletter(slug: str, session: SessionDep) -> Any:
    """No editions are made while paused; readers and schedules are kept."""
    return _newsletter_done(session, newsletters_ops.update_newsletter(session, slug, paused=True))


@router.post("/newsletters/{slug}/resume", response_model=NewsletterOut, responses=NOT_FOUND)
def resume_newsletter(slug: str, session: SessionDep) -> Any:
    return _newsletter_done(session, newsletters_ops.update_newsletter(session, slug, paused=False))


@router.post(
    "/newsletters/{slug}/archive",
    response_model=NewsletterOut,
    responses={**NOT_FOUND, 409: {"description": "An edition is still being sent"}},
)
def archive_newsletter(slug: str, session: SessionDep) -> Any:
    """No more subscriptions or editions; every row is kept, readers can still leave."""
    return _newsletter_done(session, newsletters_ops.archive_newsletter(session, slug))


@router.post("/newsletters/{slug}/unarchive", response_model=NewsletterOut, responses=NOT_FOUND)
def unarchive_newsletter(slug: str, session: SessionDep) -> Any:
    return _newsletter_done(session, newsletters_ops.unarchive_newsletter(session, slug))


@router.get("/newsletters/{slug}/stats", response_model=NewsletterStats, responses=NOT_FOUND)
def newsletter_stats(slug: str, session: SessionDep) -> Any:
    return stats_ops.stats(session, slug)[0]


# -- feeds ----------------------------------------------------------------------------------

FeedTopic = Annotated[str, Field(min_length=1, max_length=200)]


class FeedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, examples=["https://example.org/feed.xml"])
    topics: list[FeedTopic] = Field(default_factory=list, max_length=50)
    interval: int | None = Field(
        None, description="seconds between polls; default MAILER_FEED_POLL_INTERVAL"
    )
    backfill_days: int | None = Field(
        None,
        description="on the first poll, items published within this many days are due; "
        "older ones are kept as history (default MAILER_DIGEST_MAX_AGE)",
    )


class FeedPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval: int | None = Field(None, description="seconds between polls")
    topics: list[FeedTopic] | None = Field(
        None, max_length=50, description="replaces the feed's topics; [] clears them"
    )


@router.get("/newsletters/{slug}/feeds", response_model=list[FeedOut], responses=NOT_FOUND)
def list_feeds(slug: str, session: SessionDep) -> Any:
    return feeds_ops.list_feeds(session, slug)


@router.post(
    "/newsletters/{slug}/feeds",
    status_code=201,
    response_model=FeedOut,
    responses={**NOT_FOUND, **CONFLICT},
)
def add_feed(slug: str, body: FeedIn, session: SessionDep, settings: SettingsDep) -> Any:
    """Polled from the next tick on; its topics exist at once, so readers can pick them."""
    out = feeds_ops.add_feed(
        session,
        settings,
        slug,
        body.url,
        topics=body.topics,
        interval=body.interval,
        backfill_days=body.backfill_days,
    )
    _done(session)
    return out


@router.patch("/feeds/{feed_id}", response_model=FeedOut, responses=NOT_FOUND)
def edit_feed(feed_id: int, body: FeedPatch, session: SessionDep) -> Any:
    """New topics apply to articles from the next poll on; stored articles keep theirs."""
    given = body.model_dump(exclude_unset=True)
    out = feeds_ops.edit_feed(
        session, feed_id, interval=given.get("interval"), topics=given.get("topics")
    )
    _done(session)
    return out


@router.delete("/feeds/{feed_id}", response_model=FeedOut, responses=NOT_FOUND)
def remove_feed(feed_id: int, session: SessionDep) -> Any:
    """The feed goes; the articles it brought stay. Answers with what was removed."""
    out = feeds_ops.remove_feed(session, feed_id)
    _done(session)
    return out


@router.post("/feeds/{feed_id}/pause", response_model=FeedOut, responses=NOT_FOUND)
def pause_feed(feed_id: int, session: SessionDep) -> Any:
    """Kept, not polled, until resumed."""
    out = feeds_ops.set_feed_paused(session, feed_id, True)
    _done(session)
    return out


@router.post("/feeds/{feed_id}/resume", response_model=FeedOut, responses=NOT_FOUND)
def resume_feed(feed_id: int, session: SessionDep) -> Any:
    """Due at once."""
    out = feeds_ops.set_feed_paused(session, feed_id, False)
    _done(session)
    return out


# -- topics ---------------------------------------------------------------------------------


class TopicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


@router.get("/newsletters/{slug}/topics", response_model=list[TopicOut], responses=NOT_FOUND)
def list_topics(slug: str, session: SessionDep) -> Any:
    return newsletters_ops.list_topics(session, slug)


@router.post(
    "/newsletters/{slug}/topics",
    status_code=201,
    response_model=TopicOut,
    responses={**NOT_FOUND, **CONFLICT},
)
def create_topic(slug: str, body: TopicIn, session: SessionDep) -> Any:
    topic = newsletters_ops.create_topic(session, slug, body.name)
    _done(session)
    return topic


@router.patch(
    "/newsletters/{slug}/topics/{topic}",
    response_model=TopicOut,
    responses={**NOT_FOUND, **CONFLICT},
)
def rename_topic(slug: str, topic: str, body: TopicIn, session: SessionDep) -> Any:
    """Change the name readers see; the slug stays so links and preferences keep working."""
    renamed = newsletters_ops.rename_topic(session, slug, topic, body.name)
    _done(session)
    return renamed


# -- schedules ---------------------------------------------------------------------------------


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(examples=["0 8 * * MON"], description="five fields, in `timezone`")
    timezone: str = Field("UTC", examples=["Europe/Kyiv"], description="an IANA zone name")


@router.get("/newsletters/{slug}/schedules", response_model=list[ScheduleOut], responses=NOT_FOUND)
def list_schedules(slug: str, session: SessionDep) -> Any:
    return schedules_ops.list_schedules(session, slug)


@router.get(
    "/newsletters/{slug}/schedules/{frequency}",
    response_model=ScheduleOut,
    responses=NOT_FOUND,
)
def get_schedule(slug: str, frequency: Frequency, session: SessionDep) -> Any:
    return schedules_ops.get_schedule(session, slug, frequency)


@router.put(
    "/newsletters/{slug}/schedules/{frequency}",
    response_model=ScheduleOut,
    responses=NOT_FOUND,
)
def set_schedule(slug: str, frequency: Frequency, body: ScheduleIn, session: SessionDep) -> Any:
    out = schedules_ops.set_schedule(session, slug, frequency, body.cron, body.timezone)
    _done(session)
    return out


# -- subscribers --------------------------------------------------------------------------------


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    newsletter: str
    status: Status
    detail: str | None = Field(None, max_length=500, description="why, for the audit record")


@router.get("/subscribers", response_model=SubscriberPage, responses=NOT_FOUND)
def list_subscribers(
    session: SessionDep,
    newsletter: Annotated[str | None, Query(description="newsletter slug")] = None,
    status: Status | None = None,
    email: Annotated[str | None, Query(description="part of the address")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Any:
    """Readers in a stable id order, filtered; follow `next_cursor` until it is null."""
    f = subscribers_ops.SubscriberFilter(newsletter=newsletter, status=status, contains=email)
    return subscribers_ops.list_subscribers(session, f, cursor=cursor, limit=limit)


@router.get("/subscribers/{ref}", response_model=SubscriberOut, responses=NOT_FOUND)
def get_subscriber(ref: str, session: SessionDep) -> Any:
    """`ref` is the subscriber's id or address."""
    return subscribers_ops.subscriber_out(subscribers_ops.find_subscriber(session, ref))


@router.get("/subscribers/{ref}/export", response_model=SubscriberExport, responses=NOT_FOUND)
def export_subscriber(ref: str, session: SessionDep) -> Any:
    """Everything held about one reader: subscriptions, consent, audit, mail sent."""
    return subscribers_ops.export_subscriber(session, ref)


@router.post(
    "/subscribers/{ref}/status",
    response_model=SubscriptionOut,
    responses={**NOT_FOUND, 409: {"description": "The lifecycle does not allow that change"}},
)
def set_status(ref: str, body: StatusIn, session: SessionDep) -> Any:
    sub = subscribers_ops.set_status(session, ref, body.newsletter, body.status, detail=body.detail)
    out = subscribers_ops.subscription_out(sub)
    _done(session)
    return out


@router.delete("/subscribers/{ref}", response_model=ErasureReport, responses=NOT_FOUND)
def erase_subscriber(ref: str, session: SessionDep) -> Any:
    """GDPR erasure: every row about the reader goes; a hash stays only if they had opted out."""
    report = subscribers_ops.erase_subscriber(session, ref)
    _done(session)
    return report


# -- suppressions -------------------------------------------------------------------------------


@router.get("/suppressions", response_model=SuppressionPage)
def list_suppressions(
    session: SessionDep,
    reason: Annotated[str | None, Query(max_length=32, description="e.g. hard-bounce")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Any:
    """Addresses never mailed, oldest first. Entries are kept as hashes: `address` is
    given only while the address's subscriber row still exists (never after erasure)."""
    return suppressions_ops.list_suppressions(session, reason=reason, cursor=cursor, limit=limit)


@router.delete(
    "/suppressions/{address}",
    response_model=LiftOut,
    responses={404: {"description": "The address (or hash) is not on the list"}},
)
def lift_suppression(address: str, session: SessionDep, ip: IPDep) -> Any:
    """Take an address, or the `hash` the list shows, off the list; recorded in
    `suppression_event`. Subscriptions keep their status: mail resumes once active."""
    out = suppressions_ops.lift_suppression(session, address, ip=ip)
    _done(session)
    return out


@router.get("/stats", response_model=list[NewsletterStats])
def all_stats(session: SessionDep) -> Any:
    return stats_ops.stats(session)
