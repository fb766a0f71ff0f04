"""Reader pages: subscribe, confirm, unsubscribe, preferences.

A GET never changes anything: mail scanners open every link in a message,
so confirming and unsubscribing take a POST. Token-bearing POSTs need
nothing but the token (no cookie, no CSRF field), which is what RFC 8058
one-click unsubscribe requires of us. The subscribe answer is the same for a
new, a pending and an active address, so the form can't be used to learn who
reads what.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError, field_validator
from sqlalchemy.orm import Session

from mailer import jsondata, tasks, throttle
from mailer.config import Settings
from mailer.db import session_factory
from mailer.mail.tokens import Purpose, TokenError
from mailer.models import Newsletter, Status, Subscription, utcnow
from mailer.readers import newsletters, subscriptions
from mailer.readers.addresses import address_hash
from mailer.readers.newsletters import SubscriptionError, UnknownNewsletter
from mailer.tasks import enqueue_notices
from mailer.web.deps import IPDep, SessionDep, SettingsDep, TokensDep
from mailer.web.pages import message_page, page

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=True, tags=["reader"])

# The same words whoever asks (the form must not tell who is on the list), and true for
# everyone: an address blocked after a bounce or a spam report gets no mail until the
# editors lift it; one that only asked us to stop gets the confirmation, which lifts it.
ACCEPTED = (
    "Thanks! If this address can receive our mail, a message is on its way: "
    "open it and press the button to confirm your subscription. "
    "Nothing arriving? We send a new confirmation at most every few minutes, and an "
    "address that bounced or reported our mail as spam stays blocked until the "
    "newsletter's editors lift it: write to them."
)
MAX_BODY = 16 * 1024

# What the pages answer besides 200, so the OpenAPI schema tells the whole truth.
HTML: dict[str, dict[str, Any]] = {"text/html": {}}
BAD_LINK: dict[int | str, dict[str, Any]] = {
    400: {"description": "The link is tampered, expired or no longer valid", "content": HTML}
}
NO_NEWSLETTER: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such newsletter", "content": HTML}
}


class SubscribeIn(BaseModel):
    email: str
    newsletter: str
    topics: list[str] = []
    frequency: str | None = None
    website: str | None = None  # honeypot: people leave it empty, form-filling bots do not

    @field_validator("topics", mode="before")
    @classmethod
    def _topics(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [t for t in (p.strip() for p in value.split(",")) if t]
        return value


def _wants_json(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("application/json") or (
        "application/json" in request.headers.get("accept", "")
        and "text/html" not in request.headers.get("accept", "")
    )


async def _read_subscribe_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise SubscriptionError("The request is too large.")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            data = jsondata.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, jsondata.UnreadableJSON) as exc:
            raise SubscriptionError("The request body is not valid JSON.") from exc
        if not isinstance(data, dict):
            raise SubscriptionError("The request body must be a JSON object.")
        return data
    form = await request.form()
    data = {k: v for k, v in form.items() if k != "topics" and isinstance(v, str)}
    data["topics"] = [t for t in form.getlist("topics") if isinstance(t, str)]
    return data


def _error(request: Request, status: int, message: str, field: str | None = None) -> Response:
    if _wants_json(request):
        if status == 422:
            loc = ["body", field] if field else ["body"]
            return JSONResponse({"detail": [{"loc": loc, "msg": message}]}, status_code=status)
        return JSONResponse({"detail": message}, status_code=status)
    return message_page(request, "Something is not right", message, status)


def _too_many(request: Request, retry_after: int) -> Response:
    response = _error(request, 429, "Too many requests; please wait a little and try again.")
    response.headers["Retry-After"] = str(retry_after)
    return response


def _newsletter_or_404(session: Session, request: Request, slug: str) -> Newsletter | Response:
    try:
        return newsletters.open_newsletter(session, slug)
    except UnknownNewsletter as exc:
        return _error(request, 404, str(exc))


@router.get("/subscribe/{newsletter}", response_class=HTMLResponse, responses=NO_NEWSLETTER)
def subscribe_form(newsletter: str, request: Request, session: SessionDep) -> Response:
    nl = _newsletter_or_404(session, request, newsletter)
    if isinstance(nl, Response):
        return nl
    return page(request, "subscribe.html", newsletter=nl, topics=nl.topics)


def _form_again(request: Request, settings: Settings, asked: SubscribeIn, error: str) -> Response:
    """A mistake in our form (an address without @, say) shows the form again as the
    reader filled it, with what is wrong above it: not a page they must go Back from."""
    with session_factory(settings.database)() as session:
        try:
            nl = newsletters.open_newsletter(session, asked.newsletter)
        except UnknownNewsletter:
            return _error(request, 422, error)
        topics = list(nl.topics)
        # By slug or name, as the request is judged (`newsletters.pick_topics`).
        keys = newsletters.topic_keys(topics)
        chosen = {
            keys[w.strip().casefold()].id for w in asked.topics if w.strip().casefold() in keys
        }
        return page(
            request,
            "subscribe.html",
            422,
            newsletter=nl,
            topics=topics,
            error=error,
            email=asked.email,
            chosen=chosen,
            frequency=asked.frequency,
        )


@router.post(
    "/subscribe",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": SubscribeIn.model_json_schema()},
                "application/x-www-form-urlencoded": {"schema": SubscribeIn.model_json_schema()},
            }
        }
    },
    responses={
        202: {"description": "Accepted", "content": {"application/json": {}, **HTML}},
        400: {"description": "The body can't be read", "content": {"application/json": {}, **HTML}},
        404: {"description": "No such newsletter", "content": {"application/json": {}, **HTML}},
        413: {"description": "The body is too large"},
        422: {"description": "A field is wrong", "content": {"application/json": {}, **HTML}},
        429: {"description": "Too many requests", "content": {"application/json": {}, **HTML}},
        503: {"description": "Briefly unavailable", "content": {"application/json": {}, **HTML}},
    },
)
async def subscribe(request: Request, settings: SettingsDep, ip: IPDep) -> Response:
    """Start a double opt-in; form-encoded from our page or JSON from a site's own form.

    Only reading the body is async; the database and broker work is blocking and
    runs in the thread pool, so one slow request never holds up the others.
    """
    try:
        parsed: SubscribeIn | Exception = SubscribeIn.model_validate(
            await _read_subscribe_body(request)
        )
    except (SubscriptionError, ValidationError) as exc:
        parsed = exc
    return await run_in_threadpool(_subscribe, request, parsed, settings, ip)


def _subscribe(
    request: Request, parsed: SubscribeIn | Exception, settings: Settings, ip: str | None
) -> Response:
    counters: throttle.Throttle = request.app.state.throttle
    wait = None
    if ip:
        wait = counters.hit(f"ip:{ip}", settings.subscribe_rate_ip_per_minute, 60)
    if not wait and isinstance(parsed, SubscribeIn) and parsed.email.strip():
        key = "addr:" + address_hash(parsed.email.strip())
        wait = counters.hit(key, settings.subscribe_rate_address_per_hour, 3600)
    if wait:
        return _too_many(request, wait)
    if isinstance(parsed, ValidationError):
        first = parsed.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        return _error(request, 422, f"{field}: {first['msg']}", field)
    if isinstance(parsed, Exception):
        return _error(request, 400, str(parsed))
    if parsed.website:
        return _accepted(request)
    try:
        offers: newsletters.Offers = request.app.state.offers
        offer = offers.get(parsed.newsletter)
        valid = subscriptions.check_request(
            offer,
            email=parsed.email,
            topics=parsed.topics,
            frequency=parsed.frequency,
            check_deliverability=settings.check_deliverability,
        )
    except UnknownNewsletter as exc:
        return _error(request, 404, str(exc))
    except SubscriptionError as exc:
        if _wants_json(request):
            return _error(request, 422, str(exc), exc.field)
        return _form_again(request, settings, parsed, str(exc))
    payload = {
        "email": valid.address.email,
        "newsletter": offer.slug,
        "topics": valid.topics,
        "frequency": valid.frequency.value,
        "source": "api-form" if _wants_json(request) else "web",
        "ip": ip,
        "requested_at": utcnow().isoformat(),
    }
    try:
        tasks.subscribe.delay(payload)
    except Exception:  # the broker is down: say so rather than drop the request
        log.exception("could not queue a subscribe request")
        return _error(request, 503, "We could not take your request just now; please try again.")
    return _accepted(request)


def _accepted(request: Request) -> Response:
    if _wants_json(request):
        return JSONResponse({"status": "accepted", "message": ACCEPTED}, status_code=202)
    return message_page(request, "Check your inbox", ACCEPTED, 202)


def _bad_link(request: Request, exc: TokenError) -> Response:
    return message_page(request, "This link can't be used", exc.reason, 400)


@router.get("/confirm/{token}", response_class=HTMLResponse, responses=BAD_LINK)
def confirm_page(token: str, request: Request, session: SessionDep, tokens: TokensDep) -> Response:
    try:
        sub = subscriptions.subscription_for_token(session, tokens, Purpose.CONFIRM, token)
    except TokenError as exc:
        return _bad_link(request, exc)
    name = sub.newsletter.name
    if sub.status is Status.ACTIVE:
        return message_page(request, "Already confirmed", f"You are subscribed to {name}.")
    if sub.status is not Status.PENDING:
        return _bad_link(
            request, TokenError("This subscription has ended; please subscribe again.")
        )
    if sub.newsletter.archived_at is not None:
        return _bad_link(request, TokenError(newsletters.closed_message(sub.newsletter)))
    return message_page(
        request,
        f"Confirm your subscription to {name}",
        "Press the button to start receiving it.",
        action=f"/confirm/{token}",
        button="Confirm",
    )


@router.post("/confirm/{token}", response_class=HTMLResponse, responses=BAD_LINK)
def confirm(
    token: str, request: Request, session: SessionDep, tokens: TokensDep, ip: IPDep
) -> Response:
    try:
        outcome = subscriptions.confirm(session, tokens, token, ip=ip)
    except TokenError as exc:
        session.rollback()
        return _bad_link(request, exc)
    name = outcome.subscription.newsletter.name
    session.commit()
    enqueue_notices(outcome.notification_ids)
    if not outcome.changed:
        return message_page(request, "Already confirmed", f"You are subscribed to {name}.")
    return message_page(
        request,
        "You're subscribed",
        f"Thanks for confirming. {name} comes with its next edition; a welcome mail is on "
        "its way now.",
    )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=BAD_LINK)
def unsubscribe_page(
    token: str, request: Request, session: SessionDep, tokens: TokensDep
) -> Response:
    try:
        sub = subscriptions.subscription_for_token(session, tokens, Purpose.UNSUBSCRIBE, token)
    except TokenError as exc:
        return _bad_link(request, exc)
    if sub.status is Status.UNSUBSCRIBED:
        return _unsubscribed_page(request, sub)
    return message_page(
        request,
        f"Unsubscribe from {sub.newsletter.name}?",
        "Press the button and you will receive no more mail from this newsletter.",
        action=f"/unsubscribe/{token}",
        button="Unsubscribe",
        hidden={"List-Unsubscribe": "One-Click"},
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, responses=BAD_LINK)
def unsubscribe(
    token: str, request: Request, session: SessionDep, tokens: TokensDep, ip: IPDep
) -> Response:
    """RFC 8058 one-click: the mail client POSTs `List-Unsubscribe=One-Click`, nothing else."""
    try:
        sub, _changed = subscriptions.unsubscribe(session, tokens, token, ip=ip)
    except TokenError as exc:
        session.rollback()
        return _bad_link(request, exc)
    session.commit()
    return _unsubscribed_page(request, sub)


def _unsubscribed_page(request: Request, sub: Subscription) -> Response:
    return message_page(
        request,
        "You're unsubscribed",
        f"You will receive no more mail from {sub.newsletter.name}. "
        "Changed your mind? You can subscribe again at any time.",
        action=f"/subscribe/{sub.newsletter.slug}",
        button="Subscribe again",
        method="get",
    )


@router.get("/preferences/{token}", response_class=HTMLResponse, responses=BAD_LINK)
def preferences_page(
    token: str, request: Request, session: SessionDep, tokens: TokensDep
) -> Response:
    try:
        sub = subscriptions.subscription_for_token(session, tokens, Purpose.PREFERENCES, token)
    except TokenError as exc:
        return _bad_link(request, exc)
    return _preferences(request, sub, token)


def _preferences(
    request: Request, sub: Subscription, token: str, notice: str | None = None, status: int = 200
) -> Response:
    return page(
        request,
        "preferences.html",
        status,
        sub=sub,
        newsletter=sub.newsletter,
        chosen={t.id for t in sub.topics},
        token=token,
        notice=notice,
        error=status >= 400,
        active=sub.status in (Status.ACTIVE, Status.PENDING),
    )


@router.post("/preferences/{token}", response_class=HTMLResponse, responses=BAD_LINK)
def save_preferences(
    token: str,
    request: Request,
    session: SessionDep,
    tokens: TokensDep,
    ip: IPDep,
    topics: Annotated[list[str] | None, Form()] = None,
    frequency: Annotated[str | None, Form()] = None,
) -> Response:
    try:
        sub = subscriptions.update_preferences(
            session, tokens, token, topics=topics or [], frequency=frequency, ip=ip
        )
    except TokenError as exc:
        session.rollback()
        return _bad_link(request, exc)
    except SubscriptionError as exc:
        session.rollback()
        sub = subscriptions.subscription_for_token(session, tokens, Purpose.PREFERENCES, token)
        return _preferences(request, sub, token, notice=str(exc), status=400)
    session.commit()
    return _preferences(request, sub, token, notice="Your preferences are saved.")
