"""Fuzz every route of the public and operator API from its own OpenAPI schema.

Schemathesis generates requests from `/openapi.json` (valid ones and ones
that break the schema) and sends them straight into the ASGI app, which runs
against the test's PostgreSQL database with the operator's bearer token. The
app must never answer 500 and every answer must match what the schema says:
its status code, content type, headers and body shape.

Two of schemathesis' checks are left out on purpose, because they test the
schema's expressiveness rather than the app: `positive_data_acceptance` (a
schema-valid token string is still refused unless we signed it; a sender of
three characters is still not an address) and `negative_data_rejection`
(unknown query parameters are ignored, as HTTP APIs customarily do).

The number of examples is bounded so the whole run stays well under a minute
in CI; every run draws new examples, and a failure prints the request to
replay it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from mailer.web.app import create_app
from tests.conftest import configure

EXAMPLES = 25  # per operation and mode: about 1,500 requests in all
AUTH = {"Authorization": "Bearer test-api-token"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(
    settings: Settings, session: Session, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The app's own schema, bound to the app, with real rows the examples can hit."""
    fuzz_settings = configure(
        monkeypatch,
        subscribe_rate_ip_per_minute="1000000",
        subscribe_rate_address_per_hour="1000000",
    )
    nl = newsletters.create_newsletter(session, "news", "News", "News <news@example.org>")
    newsletters.ensure_topic(session, nl, "Science")
    subs.subscribe(session, email="reader@example.org", newsletter="news", confirmed=True)
    session.commit()
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(fuzz_settings))


def _pin_to_real_rows(case: Any) -> Any:
    """Half the examples name the seeded newsletter and reader, so they get past 404."""
    params = case.path_parameters or {}
    if "slug" in params:
        params["slug"] = "news"
    if "ref" in params:
        params["ref"] = "reader@example.org"
    if "topic" in params:
        params["topic"] = "science"
    return case


def _run(operation: Any, mode: GenerationMode, pin: bool) -> str | None:
    """Fuzz one operation in one mode; the failure report, or None when it held."""
    strategy = operation.as_strategy(generation_mode=mode)
    if pin:
        strategy = strategy.map(_pin_to_real_rows)

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    try:
        fuzz()
    except Unsatisfiable:  # nothing schema-breaking can be made for, e.g., a bare path string
        return None
    except (Exception, BaseExceptionGroup) as exc:  # FailureGroup: each failure, its curl
        return f"{operation.label} [{mode.value}{', pinned' if pin else ''}]\n{exc}"
    return None


def test_api_never_answers_500_nor_outside_its_own_schema(api_schema: Any) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20, "the schema lost its routes?"
    runs: list[Callable[[], str | None]] = []
    for operation in operations:
        pinned = any(p in operation.path for p in ("{slug}", "{ref}"))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            runs.append(partial(_run, operation, mode, pin=False))
            if pinned:
                runs.append(partial(_run, operation, mode, pin=True))
    for run in runs:
        failure = run()
        if failure:
            failures.append(failure)
    assert not failures, "\n\n".join(failures)
