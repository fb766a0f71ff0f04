"""`POST /api/articles`: a CMS pushes one article, a list, or a batch for one newsletter.

Accepted bodies, each item `{guid, url, title, summary, content_html,
image_url, author, published_at, topics}`:

- one object with a `newsletter` field;
- a list of such objects;
- `{"newsletter": "slug", "articles": [...]}`, items may override `newsletter`.

Invalid input answers 422 with FastAPI's `detail` list, each `loc` naming
the field (e.g. `["body", "articles", 3, "url"]`), and stores nothing.
The same guid again updates the article in place. Answers 200 with counts
and, per item, the article id and whether it was created, updated or unchanged;
topics past the newsletter's cap (`MAILER_MAX_TOPICS_PER_NEWSLETTER`) are not
created, and the answer lists them in `topics_not_created` with a `warning`.
Every field goes through the one article cleaner (`mailer.content.cleaner`) before
it is stored; what was sent is kept beside it.

Also here, for operators: `GET /api/articles/{id}` shows a stored article,
and with `?raw=true` what its source sent and what the cleaner removed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from mailer.content import articles, cleaner, incoming
from mailer.operators import articles as articles_ops
from mailer.operators.articles import ArticleDetail, ArticleOut
from mailer.web.api.core import NOT_FOUND, OperatorRoute
from mailer.web.deps import APIAuth, SessionDep, SettingsDep

router = APIRouter(
    prefix="/api",
    tags=["articles"],
    dependencies=[APIAuth],
    responses={
        400: {"description": "The body is not valid JSON"},
        401: {"description": "Missing or wrong API token"},
        413: {"description": "The body is too large"},
    },
)

MAX_ITEMS = 500


class ArticleIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    newsletter: str | None = Field(None, max_length=64)
    guid: str | None = Field(None, max_length=incoming.MAX_GUID)
    url: str = Field(min_length=1, max_length=incoming.MAX_URL)
    title: str = Field(min_length=1, max_length=incoming.MAX_TITLE)
    summary: str | None = Field(None, max_length=100_000)
    content_html: str | None = Field(None, max_length=cleaner.MAX_CONTENT)
    image_url: str | None = Field(None, max_length=incoming.MAX_URL)
    author: str | None = Field(None, max_length=incoming.MAX_AUTHOR)
    published_at: AwareDatetime | None = None
    topics: list[Annotated[str, Field(max_length=incoming.MAX_TOPIC)]] = Field(
        default_factory=list, max_length=incoming.MAX_TOPICS
    )

    def raw(self) -> incoming.RawArticle:
        return incoming.RawArticle(
            url=self.url,
            title=self.title,
            guid=self.guid,
            summary_html=self.summary,
            content_html=self.content_html,
            image_url=self.image_url,
            author=self.author,
            published_at=self.published_at,
            topics=self.topics,
        )


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    newsletter: str | None = Field(None, max_length=64)
    articles: list[ArticleIn] = Field(min_length=1, max_length=MAX_ITEMS)


def _problem(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


def _parse(payload: Any) -> tuple[list[tuple[str | None, ArticleIn]], list[list[str | int]]]:
    """The items with their newsletter slugs, and each item's `loc` prefix for errors."""
    if isinstance(payload, list):
        if not 1 <= len(payload) <= MAX_ITEMS:
            raise _Invalid([_problem(["body"], f"send 1 to {MAX_ITEMS} articles at a time")])
        found: list[ArticleIn] = []
        problems: list[dict[str, Any]] = []
        for i, item in enumerate(payload):
            try:
                found.append(ArticleIn.model_validate(item))
            except ValidationError as exc:
                problems += _errors(exc, ["body", i])
        if problems:
            raise _Invalid(problems)
        return [(a.newsletter, a) for a in found], [["body", i] for i in range(len(found))]
    if isinstance(payload, dict) and "articles" in payload:
        try:
            batch = BatchIn.model_validate(payload)
        except ValidationError as exc:
            raise _Invalid(_errors(exc, ["body"])) from exc
        items = [(a.newsletter or batch.newsletter, a) for a in batch.articles]
        return items, [["body", "articles", i] for i in range(len(items))]
    if isinstance(payload, dict):
        try:
            one = ArticleIn.model_validate(payload)
        except ValidationError as exc:
            raise _Invalid(_errors(exc, ["body"])) from exc
        return [(one.newsletter, one)], [["body"]]
    raise _Invalid([_problem(["body"], "expected an article object, a list or a batch")])


def _errors(exc: ValidationError, prefix: list[str | int]) -> list[dict[str, Any]]:
    return [
        _problem([*prefix, *err["loc"]], err["msg"], err["type"])
        for err in exc.errors(include_url=False, include_input=False)
    ]


class _Invalid(Exception):
    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems


@router.post("/articles")
def post_articles(
    session: SessionDep,
    settings: SettingsDep,
    payload: Annotated[Any, Body()],
) -> JSONResponse:
    """Create or update articles pushed by a CMS."""
    try:
        items, locs = _parse(payload)
    except _Invalid as invalid:
        return JSONResponse({"detail": invalid.problems}, status_code=422)
    budget = articles.TopicBudget.from_settings(settings)
    try:
        stored = articles.ingest_batch(
            session,
            [(slug, item.raw()) for slug, item in items],
            summary_length=settings.summary_length,
            budget=budget,
        )
    except articles.BatchRejected as rejected:
        session.rollback()
        return JSONResponse(
            {"detail": [_problem([*locs[i], field], msg) for i, field, msg in rejected.errors]},
            status_code=422,
        )
    session.commit()
    counts = dict.fromkeys((o.value for o in articles.Outcome), 0)
    for _, outcome in stored:
        counts[outcome.value] += 1
    answer: dict[str, Any] = {
        **counts,
        "articles": [
            {"id": a.id, "guid": a.guid, "url": a.url, "status": o.value} for a, o in stored
        ],
    }
    if budget.refused:
        # Stored with the topics that exist; the rest were not made, and the CMS is told.
        answer["topics_not_created"] = [
            {"newsletter": slug, "topic": name} for slug, name in budget.refused
        ]
        answer["warning"] = budget.describe()
    return JSONResponse(answer)


operator_router = APIRouter(
    prefix="/api",
    dependencies=[APIAuth],
    route_class=OperatorRoute,
    tags=["articles"],
    responses={401: {"description": "Missing or wrong API token"}},
)


@operator_router.get("/articles/{article_id}", response_model=ArticleDetail, responses=NOT_FOUND)
def get_article(article_id: int, session: SessionDep, raw: Annotated[bool, Query()] = False) -> Any:
    """A stored article as readers get it; with `raw=true` also what its source sent
    (`raw_summary`, `raw_content`; null for articles stored before that was kept) and
    what the cleaner removes from it (`removed`)."""
    return articles_ops.show_article(session, article_id, raw=raw)


@operator_router.get(
    "/newsletters/{slug}/articles", response_model=list[ArticleOut], responses=NOT_FOUND
)
def list_articles(
    slug: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 20
) -> Any:
    """The newsletter's newest articles by published time: when each arrived, and
    whether editions carry it (`due_at` null: history; `excluded_at`: kept out)."""
    return articles_ops.list_articles(session, slug, limit)


@operator_router.post(
    "/articles/{article_id}/exclude", response_model=ArticleOut, responses=NOT_FOUND
)
def exclude_article(article_id: int, session: SessionDep) -> Any:
    """Keep the article out of every edition cut from now on, until it is included."""
    out = articles_ops.exclude_article(session, article_id)
    session.commit()
    return out


@operator_router.post(
    "/articles/{article_id}/include", response_model=ArticleOut, responses=NOT_FOUND
)
def include_article(article_id: int, session: SessionDep) -> Any:
    """Put an excluded article back: the next editions carry it to readers who lack it."""
    out = articles_ops.include_article(session, article_id)
    session.commit()
    return out
