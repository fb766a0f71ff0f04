"""POST /api/articles over the FastAPI app against PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mailer.config import Settings
from mailer.db import session_scope
from mailer.models import Article
from mailer.readers.newsletters import create_newsletter
from mailer.web.app import create_app

AUTH = {"Authorization": "Bearer test-api-token"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with session_scope(settings.database) as session:
        create_newsletter(session, "news", "News", "News <news@example.com>")
        create_newsletter(session, "other", "Other", "Other <other@example.com>")
    with TestClient(create_app(settings)) as c:
        yield c


def item(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "newsletter": "news",
        "guid": "cms-1",
        "url": "https://site.example.org/2024/05/strikes?utm_source=cms",
        "title": "Tensions rise as US approves strikes",
        "summary": "<p>Just hours after the warning, the U.S. granted permission. More.</p>",
        "content_html": '<p onclick="x()">Body with <a href="/rel">a link</a>.</p>'
        "<script>x</script>",
        "image_url": "https://site.example.org/img.jpg",
        "author": "Amara Okafor",
        "published_at": "2024-05-31T09:15:00+03:00",
        "topics": ["World", "Ukraine-Russia war"],
    }
    body.update(overrides)
    return body


def count(settings: Settings) -> int:
    with session_scope(settings.database) as session:
        return session.scalar(select(func.count()).select_from(Article)) or 0


def stored(settings: Settings) -> list[Article]:
    with session_scope(settings.database) as session:
        found = list(session.scalars(select(Article).order_by(Article.id)))
        for a in found:
            _ = a.topics
        return found


def locs(response: Any) -> list[list[Any]]:
    return [e["loc"] for e in response.json()["detail"]]


# -- good payloads ----------------------------------------------------------------------------


def test_one_article_is_created_clean(client: TestClient, settings: Settings) -> None:
    response = client.post("/api/articles", json=item(), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1
    (article,) = stored(settings)
    assert article.url == "https://site.example.org/2024/05/strikes"
    assert article.summary == "Just hours after the warning, the U.S. granted permission. More."
    assert article.content_html == (
        '<p>Body with <a href="https://site.example.org/rel" rel="noopener noreferrer">'
        "a link</a>.</p>"
    )
    assert article.published_at.isoformat() == "2024-05-31T06:15:00+00:00"
    assert sorted(t.name for t in article.topics) == ["Ukraine-Russia war", "World"]
    assert article.source.startswith("api:")


def test_same_guid_twice_updates_never_duplicates(client: TestClient, settings: Settings) -> None:
    client.post("/api/articles", json=item(), headers=AUTH)
    response = client.post("/api/articles", json=item(title="Corrected title"), headers=AUTH)
    assert response.json()["articles"][0]["status"] == "updated"
    response = client.post("/api/articles", json=item(title="Corrected title"), headers=AUTH)
    assert response.json()["articles"][0]["status"] == "unchanged"
    assert [a.title for a in stored(settings)] == ["Corrected title"]


def test_same_guid_in_two_newsletters_is_two_articles(
    client: TestClient, settings: Settings
) -> None:
    client.post("/api/articles", json=[item(), item(newsletter="other")], headers=AUTH)
    assert count(settings) == 2


def test_batch_form_takes_the_newsletter_once(client: TestClient, settings: Settings) -> None:
    articles = [item(guid=f"cms-{i}", url=f"https://site.example.org/{i}") for i in range(3)]
    for a in articles:
        del a["newsletter"]
    response = client.post(
        "/api/articles", json={"newsletter": "news", "articles": articles}, headers=AUTH
    )
    assert response.status_code == 200 and response.json()["created"] == 3


def test_guid_falls_back_to_the_canonical_url(client: TestClient, settings: Settings) -> None:
    payload = item(guid=None, published_at=None, topics=[])
    client.post("/api/articles", json=payload, headers=AUTH)
    response = client.post("/api/articles", json=payload | {"title": "Again"}, headers=AUTH)
    assert response.json()["updated"] == 1
    (article,) = stored(settings)
    assert article.guid == "https://site.example.org/2024/05/strikes"


def test_script_in_title_is_text_without_the_script(client: TestClient, settings: Settings) -> None:
    title = "<script>alert(1)</script>Hello <b>world</b>"
    assert client.post("/api/articles", json=item(title=title), headers=AUTH).status_code == 200
    assert stored(settings)[0].title == "Hello world"


# -- bad payloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["none", "wrong"])
def test_without_the_api_token_nothing_is_stored(
    client: TestClient, settings: Settings, headers: dict[str, str]
) -> None:
    response = client.post("/api/articles", json=item(), headers=headers)
    assert response.status_code == 401
    assert count(settings) == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"url": None}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "/relative/path"}, "url"),
        ({"title": ""}, "title"),
        ({"title": "<script>x</script>"}, "title"),
        ({"title": "x" * 1001}, "title"),
        ({"published_at": "2024-05-31T09:15:00"}, "published_at"),
        ({"published_at": "last tuesday"}, "published_at"),
        ({"image_url": "javascript:alert(1)"}, "image_url"),
        ({"topics": "World"}, "topics"),
        ({"topics": [f"t{i}" for i in range(21)]}, "topics"),
        ({"newsletter": "nope"}, "newsletter"),
        ({"newsletter": None}, "newsletter"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_field_is_a_422_naming_it_and_stores_nothing(
    client: TestClient, settings: Settings, overrides: dict[str, Any], field: str
) -> None:
    payload = item(**overrides)
    if overrides.get("url", "") is None:
        del payload["url"]
    response = client.post("/api/articles", json=payload, headers=AUTH)
    assert response.status_code == 422, response.text
    assert any(loc[-1] == field for loc in locs(response)), response.json()
    assert count(settings) == 0


def test_one_bad_item_in_a_batch_stores_none_and_says_which(
    client: TestClient, settings: Settings
) -> None:
    articles = [
        item(guid="a", url="https://site.example.org/a"),
        item(guid="b", url="ftp://site.example.org/b"),
        item(guid="c", url="https://site.example.org/c"),
    ]
    for a in articles:
        del a["newsletter"]
    response = client.post(
        "/api/articles", json={"newsletter": "news", "articles": articles}, headers=AUTH
    )
    assert response.status_code == 422
    assert locs(response) == [["body", "articles", 1, "url"]]
    assert count(settings) == 0


def test_list_with_a_schema_error_names_the_item(client: TestClient, settings: Settings) -> None:
    response = client.post("/api/articles", json=[item(), item(title=5)], headers=AUTH)
    assert response.status_code == 422
    assert locs(response) == [["body", 1, "title"]]
    assert count(settings) == 0


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'"a string"', b'{"newsletter": "news", "articles": []}'],
    ids=["invalid-json", "empty-list", "string", "empty-batch"],
)
def test_malformed_body_is_a_422(client: TestClient, settings: Settings, body: bytes) -> None:
    response = client.post(
        "/api/articles", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert count(settings) == 0
