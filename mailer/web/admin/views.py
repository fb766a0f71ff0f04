"""/admin: a small operator page over the same functions as the API and the CLI.

Server-rendered, no JavaScript (the app's CSP allows no inline script). The
operator logs in with the API token; the page then holds a session cookie
(`cookie`: signed, expiring after `SESSION_MAX_AGE`, tied to the API token
and to a live server-side session, so logging out or rotating the token
ends it), HttpOnly, SameSite=Strict, path /admin, and Secure when the public
address is https.

Every POST but the login carries a CSRF token in a hidden field: an HMAC of
the session cookie, so it is per session and needs no server-side state. A
POST without it or with a wrong one is refused with 403 before anything is
touched. The login form has none: it carries the API token itself, which a
forger does not have (and with one operator account there is no one else
to log the victim in as).

Login attempts, right or wrong, are counted per client address with the same
counters as the subscribe limits (`MAILER_ADMIN_LOGIN_ATTEMPTS_PER_HOUR`):
past the allowance even the right token gets 429, so an operator-chosen
token can't be guessed at the web's speed.

The digest preview is served to an iframe on the preview page; that one
route says `frame-ancestors 'self'` and sandboxes the mail's HTML, every
other page keeps the app's `frame-ancestors 'none'`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from mailer import tasks, throttle
from mailer.config import Settings
from mailer.db import session_scope
from mailer.models import EDITION_OPEN, DeliveryStatus, Frequency
from mailer.operators import admin_sessions
from mailer.operators import editions as editions_ops
from mailer.operators import newsletters as newsletters_ops
from mailer.operators import schedules as schedules_ops
from mailer.operators.errors import Invalid, NotFound, OperatorError
from mailer.web.admin import cookie
from mailer.web.deps import IPDep, SessionDep, SettingsDep, get_renderer
from mailer.web.headers import mail_html_headers
from mailer.web.pages import page

router = APIRouter(prefix="/admin", include_in_schema=False)

EDITIONS_SHOWN = 5
DELIVERIES_PER_PAGE = 100

# The mail's own HTML inside the preview frame: framed by our own pages alone.
PREVIEW_FRAME_HEADERS = mail_html_headers(framed_by_us=True)


def _no_store(response: HTMLResponse) -> HTMLResponse:
    response.headers["Cache-Control"] = "no-store"
    return response


def _render(
    request: Request,
    name: str,
    admin: cookie.AdminSession | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    return _no_store(
        page(
            request,
            name,
            status_code,
            csrf=admin.csrf if admin else "",
            outbox=settings.uses_sink,
            **context,
        )
    )


def _to_login() -> RedirectResponse:
    return RedirectResponse("/admin/login", status_code=303)


def _back(**note: str | int) -> RedirectResponse:
    """Post/Redirect/Get: the dashboard, with a note chosen from a fixed set."""
    return RedirectResponse(f"/admin?{urlencode(note)}" if note else "/admin", status_code=303)


def refused(request: Request, admin: cookie.AdminSession | None) -> HTMLResponse:
    return _render(
        request,
        "admin_message.html",
        admin,
        403,
        title="Refused",
        text="This form has expired or did not come from this page. Nothing was changed; "
        "open the page again and retry.",
    )


def _failed(request: Request, admin: cookie.AdminSession, exc: OperatorError) -> HTMLResponse:
    status = 404 if isinstance(exc, NotFound) else 422 if isinstance(exc, Invalid) else 409
    return _render(request, "admin_message.html", admin, status, title="Not done", text=str(exc))


CsrfField = Annotated[str, Form()]


# -- login, logout -------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    if cookie.current_session(request) is not None:
        return _back()
    return _render(request, "admin_login.html", None, error=None)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request, settings: SettingsDep, ip: IPDep, token: Annotated[str, Form()] = ""
) -> Response:
    """The allowance is spent before the token is looked at (see the module docstring)."""
    counters: throttle.Throttle = request.app.state.throttle
    wait = counters.hit(f"login:{ip}", settings.admin_login_attempts_per_hour, 3600) if ip else None
    if wait:
        refused = _render(
            request,
            "admin_login.html",
            None,
            429,
            error=f"Too many login attempts from here; try again in {-(-wait // 60)} minutes.",
        )
        refused.headers["Retry-After"] = str(wait)
        return refused
    expected: str = request.app.state.api_token
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return _render(
            request,
            "admin_login.html",
            None,
            401,
            error="That is not the API token (MAILER_API_TOKEN, or api.token in the data "
            "directory).",
        )
    with session_scope(settings.database) as session:
        sid = admin_sessions.start(session, timedelta(seconds=cookie.SESSION_MAX_AGE))
    signed = cookie.serializer(settings).dumps({"sid": sid, "tag": cookie.token_tag(request)})
    response = _back()
    response.set_cookie(
        cookie.COOKIE,
        signed,
        max_age=cookie.SESSION_MAX_AGE,
        path="/admin",
        secure=settings.base_url.startswith("https://"),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout", response_class=HTMLResponse)
def logout(request: Request, settings: SettingsDep, csrf: CsrfField = "") -> Response:
    admin = cookie.checked(request, csrf)
    if admin is None:
        return refused(request, cookie.current_session(request))
    with session_scope(settings.database) as session:
        admin_sessions.end(session, admin.sid)
    response = _to_login()
    response.delete_cookie(
        cookie.COOKIE,
        path="/admin",
        secure=settings.base_url.startswith("https://"),
        httponly=True,
        samesite="strict",
    )
    return response


# -- the dashboard ------------------------------------------------------------------------


NOTES = {
    "paused": "{slug} is paused: no scheduled editions until it is resumed.",
    "resumed": "{slug} is running on its schedules again.",
    "sent": "Edition {edition} is made and on its way to the workers.",
    "again": "Edition {edition} was already made this minute; nothing more was sent.",
    "cancelled": "Edition {edition} is cancelled; mail already going out finishes.",
    "edited": "{slug} is saved.",
    "archived": "{slug} is archived: no subscriptions and no editions; nothing is deleted.",
    "unarchived": "{slug} takes subscriptions and makes editions again.",
}


def _note(session: Session, note: str | None, slug: str | None, edition: int | None) -> str | None:
    """A fixed sentence for a fixed code; a slug is shown only if it names a newsletter."""
    if note not in NOTES:
        return None
    if slug is not None and slug not in {
        nl.slug for nl in newsletters_ops.list_newsletters(session)
    }:
        return None
    return NOTES[note].format(slug=slug or "", edition=edition or "")


@router.get("", response_class=HTMLResponse)
def dashboard(
    request: Request,
    session: SessionDep,
    note: str | None = None,
    slug: str | None = None,
    edition: int | None = None,
) -> Response:
    admin = cookie.current_session(request)
    if admin is None:
        return _to_login()
    newsletters = []
    for nl in newsletters_ops.list_newsletters(session):
        newsletters.append(
            {
                "nl": nl,
                "schedules": schedules_ops.list_schedules(session, nl.slug),
                "editions": editions_ops.list_editions(
                    session, nl.slug, limit=EDITIONS_SHOWN
                ).items,
            }
        )
    return _render(
        request,
        "admin.html",
        admin,
        newsletters=newsletters,
        frequencies=[f.value for f in Frequency],
        note=_note(session, note, slug, edition),
        open_states=EDITION_OPEN,
    )


@router.post("/newsletters/{slug}/pause", response_class=HTMLResponse)
def pause(slug: str, request: Request, session: SessionDep, csrf: CsrfField = "") -> Response:
    return _lifecycle(
        request,
        session,
        slug,
        csrf,
        lambda s, n: newsletters_ops.update_newsletter(s, n, paused=True),
        "paused",
    )


@router.post("/newsletters/{slug}/resume", response_class=HTMLResponse)
def resume(slug: str, request: Request, session: SessionDep, csrf: CsrfField = "") -> Response:
    return _lifecycle(
        request,
        session,
        slug,
        csrf,
        lambda s, n: newsletters_ops.update_newsletter(s, n, paused=False),
        "resumed",
    )


@router.post("/newsletters/{slug}/edit", response_class=HTMLResponse)
def edit(
    slug: str,
    request: Request,
    session: SessionDep,
    csrf: CsrfField = "",
    name: Annotated[str, Form()] = "",
    sender: Annotated[str, Form()] = "",
    frequency: Annotated[str, Form()] = "",
) -> Response:
    """Rename, change the sender or the default frequency: `PATCH /api/newsletters/{slug}`."""
    admin = cookie.checked(request, csrf)
    if admin is None:
        return refused(request, cookie.current_session(request))
    try:
        newsletters_ops.update_newsletter(
            session,
            slug,
            name=name,
            sender=sender,
            default_frequency=newsletters_ops.parse_frequency(frequency),
        )
    except OperatorError as exc:
        session.rollback()
        return _failed(request, admin, exc)
    session.commit()
    return _back(note="edited", slug=slug)


@router.post("/newsletters/{slug}/archive", response_class=HTMLResponse)
def archive(slug: str, request: Request, session: SessionDep, csrf: CsrfField = "") -> Response:
    return _lifecycle(request, session, slug, csrf, newsletters_ops.archive_newsletter, "archived")


@router.post("/newsletters/{slug}/unarchive", response_class=HTMLResponse)
def unarchive(slug: str, request: Request, session: SessionDep, csrf: CsrfField = "") -> Response:
    return _lifecycle(
        request, session, slug, csrf, newsletters_ops.unarchive_newsletter, "unarchived"
    )


def _lifecycle(
    request: Request,
    session: Session,
    slug: str,
    csrf: str,
    change: Callable[[Session, str], object],
    note: str,
) -> Response:
    admin = cookie.checked(request, csrf)
    if admin is None:
        return refused(request, cookie.current_session(request))
    try:
        change(session, slug)
    except OperatorError as exc:
        return _failed(request, admin, exc)
    session.commit()
    return _back(note=note, slug=slug)


@router.post("/newsletters/{slug}/send", response_class=HTMLResponse)
def send_now(
    slug: str,
    request: Request,
    session: SessionDep,
    csrf: CsrfField = "",
    frequency: Annotated[str, Form()] = "",
) -> Response:
    admin = cookie.checked(request, csrf)
    if admin is None:
        return refused(request, cookie.current_session(request))
    try:
        freq = newsletters_ops.parse_frequency(frequency) if frequency else None
        digest, new = editions_ops.send_now(session, slug, freq)
    except OperatorError as exc:
        return _failed(request, admin, exc)
    digest_id = digest.id
    session.commit()
    if new:
        tasks.enqueue_prepare([digest_id])
    return _back(note="sent" if new else "again", edition=digest_id)


@router.post("/editions/{digest_id}/cancel", response_class=HTMLResponse)
def cancel(digest_id: int, request: Request, session: SessionDep, csrf: CsrfField = "") -> Response:
    admin = cookie.checked(request, csrf)
    if admin is None:
        return refused(request, cookie.current_session(request))
    try:
        editions_ops.cancel_edition(session, digest_id)
    except OperatorError as exc:
        return _failed(request, admin, exc)
    session.commit()
    return _back(note="cancelled", edition=digest_id)


# -- an edition's deliveries -------------------------------------------------------------------


@router.get("/editions/{digest_id}", response_class=HTMLResponse)
def edition(
    digest_id: int,
    request: Request,
    session: SessionDep,
    status: DeliveryStatus | None = None,
    cursor: str | None = None,
) -> Response:
    admin = cookie.current_session(request)
    if admin is None:
        return _to_login()
    try:
        out = editions_ops.edition_out(session, digest_id)
        deliveries = editions_ops.list_deliveries(
            session,
            digest_id,
            statuses=[status] if status else (),
            cursor=cursor,
            limit=DELIVERIES_PER_PAGE,
        )
    except OperatorError as exc:
        return _failed(request, admin, exc)
    more = None
    if deliveries.next_cursor:
        more = urlencode(
            {**({"status": status.value} if status else {}), "cursor": deliveries.next_cursor}
        )
    return _render(
        request,
        "admin_edition.html",
        admin,
        edition=out,
        deliveries=deliveries.items,
        status=status.value if status else "",
        statuses=[s.value for s in DeliveryStatus],
        more=more,
        open_states=EDITION_OPEN,
    )


# -- preview --------------------------------------------------------------------------------


def _preview_query(frequency: Frequency | None, subscriber: str | None) -> str:
    query = {
        **({"frequency": frequency.value} if frequency else {}),
        **({"subscriber": subscriber} if subscriber else {}),
    }
    return urlencode(query)


@router.get("/newsletters/{slug}/preview", response_class=HTMLResponse)
def preview_page(
    slug: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    frequency: Frequency | None = None,
    subscriber: str | None = None,
) -> Response:
    """The next edition's facts, and its HTML in a sandboxed frame (served below)."""
    admin = cookie.current_session(request)
    if admin is None:
        return _to_login()
    subscriber = (subscriber or "").strip() or None
    try:
        found = editions_ops.preview_edition(
            session,
            settings,
            get_renderer(request),
            slug,
            frequency=frequency,
            subscriber=subscriber,
        )
        error = None
    except OperatorError as exc:
        found, error = None, str(exc)
    session.rollback()
    return _render(
        request,
        "admin_preview.html",
        admin,
        200 if error is None else 409,
        slug=slug,
        preview=found,
        error=error,
        frequency=frequency.value if frequency else "",
        subscriber=subscriber or "",
        frequencies=[f.value for f in Frequency],
        frame_src=f"/admin/newsletters/{slug}/preview/html?{_preview_query(frequency, subscriber)}",
    )


@router.get("/newsletters/{slug}/preview/html")
def preview_html(
    slug: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    frequency: Frequency | None = None,
    subscriber: str | None = None,
) -> Response:
    """The mail's HTML alone, for the frame: nothing recorded, framed by /admin only."""
    if cookie.current_session(request) is None:
        return Response("log in at /admin first", status_code=403, media_type="text/plain")
    try:
        found = editions_ops.preview_edition(
            session,
            settings,
            get_renderer(request),
            slug,
            frequency=frequency,
            subscriber=(subscriber or "").strip() or None,
        )
    except OperatorError as exc:
        return Response(
            str(exc),
            status_code=409,
            media_type="text/plain",
            headers={"Cache-Control": "no-store"},
        )
    finally:
        session.rollback()
    return HTMLResponse(found.html, headers=PREVIEW_FRAME_HEADERS)
