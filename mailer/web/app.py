"""The FastAPI application: reader pages, the outbox and the operator API.

Routes stay thin: parse, call one domain function, commit, enqueue. The app
refuses to start on an un-migrated database, and answers 503 with
Retry-After, never a stack trace, while a service it needs on a request
path is unreachable: the database, or Redis (the request counters of the
rate-limited routes live there when it is the broker).
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from mailer import logs, throttle
from mailer.config import Settings, get_settings
from mailer.db import get_engine, session_factory
from mailer.mail.links import tokens_for
from mailer.migrate import require_current
from mailer.readers.newsletters import Offers
from mailer.web.auth import AuthFirst
from mailer.web.headers import SecurityHeaders
from mailer.web.limits import BodyLimit
from mailer.web.proxies import TrustedProxies

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' https: data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}


def create_app(settings: Settings | None = None, *, check_migrations: bool = True) -> FastAPI:
    settings = settings or get_settings()
    settings.check()
    logs.install(settings)
    engine = get_engine(settings.database)
    if check_migrations:
        require_current(engine)

    # /docs is ours (web/docs.py: a page with its own policy); ReDoc is not offered.
    app = FastAPI(
        title="mailer", version="0.1.0", docs_url=None, redoc_url=None, openapi_url="/openapi.json"
    )
    app.state.settings = settings
    app.state.tokens = tokens_for(settings)
    app.state.api_token = settings.api_secret()
    app.state.throttle = throttle.for_settings(settings)
    app.state.offers = Offers(session_factory(settings.database))

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthFirst)  # outside BodyLimit: who asks is settled first
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["POST"],
            allow_headers=["Content-Type"],
        )

    app.add_middleware(SecurityHeaders, headers=SECURITY_HEADERS)
    # Outermost: every layer inside sees the caller's address as our proxies tell it.
    app.add_middleware(TrustedProxies, trusted=settings.trusted_proxies)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def service_down(request: Request, exc: Exception) -> Response:
        what = "redis" if isinstance(exc, redis.RedisError) else "database"
        log.error("%s unavailable: %s", what, type(exc).__name__)
        return JSONResponse(
            {"detail": "The service is briefly unavailable; please try again shortly."},
            status_code=503,
            headers={"Retry-After": "10"},
        )

    @app.exception_handler(DataError)
    async def unusable_value(request: Request, exc: Exception) -> Response:
        # A value PostgreSQL refuses (a NUL character, an id past `integer`) is the
        # caller's mistake, not an outage: 422 in FastAPI's shape, not 503.
        log.info("refused a value the database can't use: %s", type(exc).__name__)
        return JSONResponse(
            {
                "detail": [
                    {
                        "loc": ["request"],
                        "msg": "A value can't be used: a number out of range or a NUL character.",
                        "type": "value_error",
                    }
                ]
            },
            status_code=422,
        )

    from mailer.web import docs, home, reader

    app.include_router(docs.router)
    app.include_router(home.router)
    app.include_router(reader.router)
    from mailer.web.api import core as api

    app.include_router(api.router)
    from mailer.web.api import articles as api_articles

    app.include_router(api_articles.router)
    app.include_router(api_articles.operator_router)
    from mailer.web.api import bounces as api_bounces

    app.include_router(api_bounces.router)
    from mailer.web.api import editions as api_editions

    app.include_router(api_editions.router)
    from mailer.web import digest_view

    app.include_router(digest_view.router)
    from mailer.web.admin import views as admin

    app.include_router(admin.router)
    if settings.uses_sink:
        from mailer.web import outbox

        app.include_router(outbox.router)
    return app
