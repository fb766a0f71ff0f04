"""JSON nested thousands deep is refused with a 4xx, never a 500, on every JSON endpoint.

`json.loads` raises RecursionError (not a ValueError) past ~1,000 levels, and
what parses can still exhaust the stack of whatever walks it next. Every
operation whose schema takes a JSON body is asked, over real HTTP, plus the
bounce webhook (which reads its body itself) and the subscribe form's JSON.
"""

from __future__ import annotations

import httpx
import pytest

from mailer import jsondata
from mailer.content import pages
from mailer.readers import newsletters

DEPTHS = (5_000, 990, jsondata.MAX_DEPTH + 1)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def json_operations(base: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{base}/openapi.json").json()
    found = [("POST", "/api/bounces")]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                found.append((method.upper(), path))
    return sorted(set(found))


def test_deeply_nested_json_is_a_4xx_on_every_json_endpoint(settings, session, live_server):
    newsletters.create_newsletter(session, "n", "N", "N <n@example.org>")
    session.commit()
    operations = json_operations(live_server)
    assert ("POST", "/subscribe") in operations and ("POST", "/api/articles") in operations
    answers = {}
    with httpx.Client(
        base_url=live_server, headers={"Authorization": "Bearer test-api-token"}, timeout=30
    ) as http:
        for method, path in operations:
            url = path.replace("{slug}", "n").replace("{", "").replace("}", "")
            for depth in DEPTHS:
                for body in (nested(depth), '{"email": ' + nested(depth) + "}"):
                    answer = http.request(
                        method, url, content=body, headers={"Content-Type": "application/json"}
                    )
                    answers[(method, path, depth, body[:2])] = answer.status_code
    assert all(400 <= code < 500 for code in answers.values()), {
        k: v for k, v in answers.items() if not 400 <= v < 500
    }
    assert answers[("POST", "/api/bounces", 5_000, "[[")] == 422  # it answers bad JSON so
    assert answers[("POST", "/subscribe", 5_000, "[[")] == 400
    # and the server is still there for the next reader
    assert httpx.get(f"{live_server}/subscribe/n").status_code == 200


@pytest.mark.parametrize("depth", [5_000, 990, jsondata.MAX_DEPTH + 1])
def test_an_imported_page_with_deeply_nested_json_ld_is_read_without_it(depth: int) -> None:
    page = (
        "<html><head><title>Plain title</title>"
        f'<script type="application/ld+json">{nested(depth)}</script>'
        "</head><body><article><p>Some text of the article.</p></article></body></html>"
    )
    raw = pages.extract(page, "https://example.org/a")
    assert raw.title == "Plain title"


def test_json_nested_to_the_limit_is_read_and_past_it_refused() -> None:
    assert jsondata.depth(jsondata.loads(nested(jsondata.MAX_DEPTH))) == jsondata.MAX_DEPTH
    with pytest.raises(jsondata.UnreadableJSON, match="nested"):
        jsondata.loads(nested(jsondata.MAX_DEPTH + 1))
    with pytest.raises(jsondata.UnreadableJSON, match="nested"):
        jsondata.loads(nested(50_000))
