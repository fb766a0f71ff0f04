"""`/` is a home page: where to subscribe and where to operate, and nothing private."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from mailer.operators import newsletters as newsletters_ops
from mailer.readers import newsletters
from mailer.readers import subscriptions as subs
from mailer.web.app import create_app
from tests.conftest import configure


def newsroom(session) -> None:
    newsletters.create_newsletter(session, "weekly", "Weekly Notes", "Desk <desk@example.org>")
    newsletters.create_newsletter(session, "old", "Old Letter", "Old <old@example.org>")
    for i in range(7):
        subs.subscribe(
            session, email=f"r{i}@example.org", newsletter="weekly", confirmed=True, source="t"
        )
    newsletters_ops.archive_newsletter(session, "old")
    session.commit()


def test_home_lists_open_newsletters_with_links_and_no_private_data(settings, session):
    newsroom(session)
    with TestClient(create_app(settings)) as client:
        home = client.get("/")
        assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
        links = set(re.findall(r'href="([^"]+)"', home.text))
        assert {"/subscribe/weekly", "/admin", "/docs"} <= links
        assert "/subscribe/old" not in links  # archived: takes no subscriptions
        assert "/outbox" not in links  # a real relay: there is no outbox
        assert "Weekly Notes" in home.text
        for private in ("desk@example.org", "r0@example.org", ">7<", " 7 "):
            assert private not in home.text
        for link in links - {"/"}:
            assert client.get(link).status_code == 200, link


def test_home_links_the_outbox_when_the_built_in_sink_is_on(settings, session, monkeypatch):
    sink = configure(monkeypatch, smtp_url="")
    with TestClient(create_app(sink)) as client:
        home = client.get("/")
        assert 'href="/outbox"' in home.text
        assert "No newsletter takes subscriptions yet" in home.text
        assert client.get("/outbox").status_code == 200
