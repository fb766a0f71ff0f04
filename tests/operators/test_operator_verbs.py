"""The verbs a newsroom reached for the database for: feeds removed, paused and edited,
newsletters edited and archived. Through the operator API and the CLI, against
PostgreSQL; each refusal is checked to change nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailer.content import feeds
from mailer.editions import schedule
from mailer.mail.links import Links
from mailer.models import Article, Feed, Frequency, Newsletter, Status, Subscription, utcnow
from mailer.operators import feeds as feeds_ops
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from mailer.web.admin import cookie as admin_cookie
from tests.conftest import API_TOKEN as TOKEN
from tests.helpers.cli import run

FEED = "https://news.example.org/feed.xml"


@pytest.fixture
def newsletter(session):
    nl = newsletters.create_newsletter(session, "weekly", "Weekly", "Weekly <news@example.org>")
    session.commit()
    return nl


def feed_rows(session) -> list[tuple]:
    """Everything about every feed, to show a refused request changed nothing."""
    session.expire_all()
    return [
        (f.id, f.url, tuple(f.topics), f.interval, f.paused, f.next_poll_at)
        for f in session.scalars(select(Feed).order_by(Feed.id))
    ]


def newsletter_row(session, slug="weekly") -> tuple:
    session.expire_all()
    nl = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).one()
    return (nl.name, nl.sender, nl.default_frequency, nl.site_url, nl.paused, nl.archived_at)


def claimed(session) -> list[int]:
    ids = feeds.claim_due_feeds(session)
    session.rollback()
    return ids


# -- feeds over the API ----------------------------------------------------------------------


def test_a_feed_is_added_listed_edited_paused_resumed_and_removed_over_the_api(
    api, session, newsletter
):
    made = api.post(
        "/api/newsletters/weekly/feeds",
        headers=TOKEN,
        json={"url": FEED, "topics": ["Science"], "interval": 600},
    )
    assert made.status_code == 201, made.text
    feed = made.json()
    assert feed["newsletter"] == "weekly" and feed["topics"] == ["Science"]
    assert feed["interval"] == 600 and feed["paused"] is False
    listed = api.get("/api/newsletters/weekly/feeds", headers=TOKEN).json()
    assert [f["id"] for f in listed] == [feed["id"]]

    edited = api.patch(
        f"/api/feeds/{feed['id']}", headers=TOKEN, json={"interval": 3600, "topics": ["Space"]}
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["interval"] == 3600 and edited.json()["topics"] == ["Space"]
    cleared = api.patch(f"/api/feeds/{feed['id']}", headers=TOKEN, json={"topics": []})
    assert cleared.json()["topics"] == [] and cleared.json()["interval"] == 3600

    assert claimed(session) == [feed["id"]]  # new: due at once
    paused = api.post(f"/api/feeds/{feed['id']}/pause", headers=TOKEN)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert claimed(session) == []  # due, but paused: not polled
    resumed = api.post(f"/api/feeds/{feed['id']}/resume", headers=TOKEN)
    assert resumed.json()["paused"] is False and resumed.json()["next_poll_at"] is None
    assert claimed(session) == [feed["id"]]

    session.add(
        Article(
            newsletter_id=newsletter.id,
            source=f"feed:{feed['id']}",
            guid="g1",
            url="https://news.example.org/1",
            title="Kept",
            published_at=utcnow(),
        )
    )
    session.commit()
    gone = api.delete(f"/api/feeds/{feed['id']}", headers=TOKEN)
    assert gone.status_code == 200 and gone.json()["url"] == FEED
    assert feed_rows(session) == []
    assert session.scalar(select(Article.title)) == "Kept"  # its articles stay
    assert api.delete(f"/api/feeds/{feed['id']}", headers=TOKEN).status_code == 404


def test_a_paused_feed_is_not_polled_even_by_feed_poll_all(settings, session, newsletter):
    feed = feeds.add_feed(session, newsletter, FEED)
    feeds.set_paused(session, feed, True)
    session.commit()
    result = run("feed", "poll", "--all")
    assert result.exit_code == 0, result.output
    assert "no feed is due" in result.output
    assert feed_rows(session)[0][5] is None  # never claimed, never polled


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/api/newsletters/weekly/feeds", {"url": "ftp://x.example/f"}, 422, "url"),
        ("post", "/api/newsletters/weekly/feeds", {"url": "/feed.xml"}, 422, "url"),
        ("post", "/api/newsletters/weekly/feeds", {"url": FEED, "interval": 5}, 422, "interval"),
        ("post", "/api/newsletters/weekly/feeds", {"url": FEED}, 409, None),  # already there
        ("post", "/api/newsletters/nope/feeds", {"url": FEED + "?2"}, 404, None),
        ("post", "/api/newsletters/weekly/feeds", {"url": FEED, "extra": 1}, 422, "extra"),
        ("patch", "/api/feeds/{id}", {}, 422, "body"),  # nothing to change
        ("patch", "/api/feeds/{id}", {"interval": 10**9}, 422, "interval"),
        ("patch", "/api/feeds/{id}", {"topics": ["x" * 201]}, 422, "topics"),
        ("patch", "/api/feeds/999", {"interval": 600}, 404, None),
        ("delete", "/api/feeds/99999999999999", None, 404, None),
        ("post", "/api/feeds/0/pause", None, 404, None),
        ("post", "/api/feeds/999/resume", None, 404, None),
    ],
)
def test_bad_feed_requests_are_refused_with_a_clear_answer_and_change_nothing(
    api, session, newsletter, method, path, body, status, field
):
    feed = feeds.add_feed(session, newsletter, FEED, topics=["Science"], interval=900)
    session.commit()
    before = feed_rows(session)
    kwargs = {"json": body} if body is not None else {}
    answer = api.request(method, path.format(id=feed.id), headers=TOKEN, **kwargs)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    if field is not None:
        assert field in detail[0]["loc"], detail
        assert detail[0]["msg"]
    else:
        assert isinstance(detail, str) and detail
    assert feed_rows(session) == before


# -- newsletters: archive ----------------------------------------------------------------


def pending_reader(session, settings, email="pending@example.org") -> str:
    """A reader who has not confirmed yet; returns their confirm link."""
    out = subs.subscribe(session, email=email, newsletter="weekly", source="test")
    session.commit()
    return Links.from_settings(settings).confirm(session.get_one(Subscription, out.subscription_id))


def test_an_archived_newsletter_takes_no_subscriptions_and_makes_no_editions(
    api, settings, session, newsletter
):
    confirm = pending_reader(session, settings)
    active = subs.subscribe(
        session, email="reader@example.org", newsletter="weekly", confirmed=True, source="test"
    )
    feed = feeds.add_feed(session, newsletter, FEED)
    session.commit()
    unsubscribe = Links.from_settings(settings).unsubscribe(
        session.get_one(Subscription, active.subscription_id)
    )

    archived = api.post("/api/newsletters/weekly/archive", headers=TOKEN)
    assert archived.status_code == 200 and archived.json()["archived_at"]
    assert api.post("/api/newsletters/weekly/archive", headers=TOKEN).status_code == 200

    page = api.get("/subscribe/weekly")
    assert page.status_code == 404 and "no longer takes subscriptions" in page.text
    joined = api.post("/subscribe", json={"email": "new@example.org", "newsletter": "weekly"})
    assert joined.status_code == 404 and "no longer takes subscriptions" in joined.text
    session.expire_all()
    with pytest.raises(newsletters.NewsletterClosed):  # the worker's own check, too
        subs.subscribe(session, email="new@example.org", newsletter="weekly", source="test")
    session.rollback()
    path = confirm.removeprefix(settings.base_url)
    assert "no longer takes subscriptions" in api.get(path).text
    assert api.post(path).status_code == 400
    session.expire_all()
    assert {s.status for s in session.scalars(select(Subscription))} == {
        Status.PENDING,
        Status.ACTIVE,
    }

    sent = api.post("/api/newsletters/weekly/editions", headers=TOKEN)
    assert sent.status_code == 409 and "archived" in sent.json()["detail"]
    assert schedule.due_editions(session, utcnow().replace(hour=23, minute=59)) == []
    assert feed.id not in claimed(session)

    left = api.post(unsubscribe.removeprefix(settings.base_url))  # leaving always works
    assert left.status_code == 200
    assert "weekly" in {n["slug"] for n in api.get("/api/newsletters", headers=TOKEN).json()}

    reopened = api.post("/api/newsletters/weekly/unarchive", headers=TOKEN)
    assert reopened.status_code == 200 and reopened.json()["archived_at"] is None
    again = api.post("/subscribe", json={"email": "new@example.org", "newsletter": "weekly"})
    assert again.status_code == 202, again.text


def test_archiving_while_an_edition_is_sending_is_refused_and_changes_nothing(
    api, session, newsletter
):
    edition = schedule.create_now(session, newsletter, Frequency.WEEKLY)
    edition.status = "sending"
    session.commit()
    before = newsletter_row(session)
    answer = api.post("/api/newsletters/weekly/archive", headers=TOKEN)
    assert answer.status_code == 409
    assert f"mailer digest cancel {edition.id}" in answer.json()["detail"]
    assert newsletter_row(session) == before


# -- the same verbs in the CLI -----------------------------------------------------------


def test_feed_verbs_in_the_cli(settings, session, newsletter):
    added = run("feed", "add", "weekly", FEED, "--topic", "Science")
    assert added.exit_code == 0, added.output
    feed_id = feed_rows(session)[0][0]

    edited = run("feed", "edit", str(feed_id), "--interval", "1200", "--topic", "Space")
    assert edited.exit_code == 0, edited.output
    assert feed_rows(session)[0][2:4] == (("Space",), 1200)
    assert run("feed", "edit", str(feed_id), "--clear-topics").exit_code == 0
    assert feed_rows(session)[0][2] == ()

    assert run("feed", "pause", str(feed_id)).exit_code == 0
    assert feed_rows(session)[0][4] is True
    assert "paused" in run("feed", "list").output
    assert run("feed", "resume", str(feed_id)).exit_code == 0
    assert feed_rows(session)[0][4] is False

    removed = run("feed", "remove", str(feed_id))
    assert removed.exit_code == 0 and "its articles stay" in removed.output
    assert feed_rows(session) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("feed", "edit", "{id}"), "nothing to change"),
        (("feed", "edit", "{id}", "--interval", "5"), "the interval is 60-604800 seconds"),
        (("feed", "edit", "{id}", "--topic", "a", "--clear-topics"), "contradict"),
        (("feed", "edit", "999", "--interval", "600"), "There is no feed 999"),
        (("feed", "pause", "999"), "There is no feed 999"),
        (("feed", "remove", "999"), "There is no feed 999"),
        (("feed", "add", "weekly", FEED), "already has the feed"),
        (("feed", "add", "weekly", "file:///etc/passwd"), "absolute http(s) URL"),
        (("newsletter", "edit", "weekly"), "nothing to change"),
        (("newsletter", "edit", "weekly", "--from", "not an address"), "sender"),
        (
            ("newsletter", "edit", "weekly", "--from", "no-at-sign"),
            "The sender address 'no-at-sign' is not valid: An email address must have an @-sign.",
        ),
        (("newsletter", "edit", "weekly", "--name", "a\nBcc: x@evil.example"), "one non-empty"),
        (("newsletter", "edit", "nope", "--name", "N"), "There is no newsletter 'nope'"),
        (("newsletter", "archive", "nope"), "There is no newsletter 'nope'"),
    ],
)
def test_bad_cli_verbs_say_what_is_wrong_and_change_nothing(
    settings, session, newsletter, args, message
):
    feeds.add_feed(session, newsletter, FEED)
    session.commit()
    feed_id = feed_rows(session)[0][0]
    before = (feed_rows(session), newsletter_row(session))
    result = run(*(a.format(id=feed_id) for a in args))
    assert result.exit_code != 0
    assert message.lower() in result.output.lower(), result.output
    assert "Traceback" not in result.output
    assert (feed_rows(session), newsletter_row(session)) == before


def test_newsletter_edit_archive_and_unarchive_in_the_cli(settings, session, newsletter):
    edited = run(
        "newsletter", "edit", "weekly", "--name", "The Weekly",
        "--from", "Desk <desk@example.org>", "--frequency", "daily",
    )  # fmt: skip
    assert edited.exit_code == 0, edited.output
    name, sender, frequency, *_ = newsletter_row(session)
    assert (name, sender, frequency) == ("The Weekly", "Desk <desk@example.org>", Frequency.DAILY)

    assert run("newsletter", "archive", "weekly").exit_code == 0
    assert newsletter_row(session)[5] is not None
    assert "archived" in run("newsletter", "list").output
    refused = run("digest", "send", "weekly")
    assert refused.exit_code != 0 and "archived" in refused.output
    assert run("newsletter", "unarchive", "weekly").exit_code == 0
    assert newsletter_row(session)[5] is None


def test_the_new_verbs_are_in_the_openapi_schema(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths["/api/newsletters/{slug}/feeds"]) == {"get", "post"}
    assert set(paths["/api/feeds/{feed_id}"]) == {"patch", "delete"}
    for path in (
        "/api/feeds/{feed_id}/pause",
        "/api/feeds/{feed_id}/resume",
        "/api/newsletters/{slug}/archive",
        "/api/newsletters/{slug}/unarchive",
    ):
        assert "post" in paths[path], path
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert {"archived_at", "active_readers"} <= set(schemas["NewsletterOut"]["properties"])
    assert set(schemas["FeedOut"]["properties"]) == set(feeds_ops.FeedOut.model_fields)


def test_the_admin_page_edits_archives_and_unarchives_a_newsletter(
    api, settings, session, newsletter
):
    login = api.post("/admin/login", data={"token": "test-api-token"}, follow_redirects=False)
    assert login.status_code == 303
    csrf = admin_cookie.csrf_token(settings, login.cookies[admin_cookie.COOKIE])
    page = api.get("/admin").text
    assert 'action="/admin/newsletters/weekly/edit"' in page and ">Archive<" in page

    form = {"csrf": csrf, "name": "The Weekly", "sender": "Desk <desk@example.org>"}
    saved = api.post("/admin/newsletters/weekly/edit", data=form | {"frequency": "daily"})
    assert saved.status_code == 200 and "weekly is saved." in saved.text
    assert newsletter_row(session)[:3] == ("The Weekly", "Desk <desk@example.org>", Frequency.DAILY)

    before = newsletter_row(session)
    bad = api.post(
        "/admin/newsletters/weekly/edit", data=form | {"sender": "nobody", "frequency": "daily"}
    )
    assert bad.status_code == 422 and "sender" in bad.text.lower()
    forged = api.post("/admin/newsletters/weekly/archive", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    assert newsletter_row(session) == before

    archived = api.post("/admin/newsletters/weekly/archive", data={"csrf": csrf})
    assert "weekly is archived" in archived.text and ">Unarchive<" in archived.text
    assert newsletter_row(session)[5] is not None
    api.post("/admin/newsletters/weekly/unarchive", data={"csrf": csrf})
    assert newsletter_row(session)[5] is None
