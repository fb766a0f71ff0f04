"""Inside a namespace of its own (tests/helpers/netns.py): a public-looking site that redirects
inward, an internal one on loopback, and our fetches of both. Prints what came of each as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mailer import migrate
from mailer.config import Settings
from mailer.content import feeds, pages
from mailer.content.incoming import ArticleError
from mailer.db import session_scope
from mailer.models import Article
from mailer.readers.newsletters import create_newsletter
from tests.fixtures.feedserver import FeedServer, fixture


def main(public_address: str, data_dir: str) -> None:
    internal = FeedServer()  # 127.0.0.1: what the feed must never reach
    internal.serve("/secret", b"<html><title>Internal</title><p>db password: hunter2</p></html>")
    internal.serve("/feed", fixture("feeds/atom.xml"))
    site = FeedServer(host=public_address)
    site.serve("/feed.xml", fixture("feeds/atom.xml"))
    inward = {
        "loopback": internal.url("/feed"),
        "localhost": f"http://localhost:{internal.port}/feed",
        "ipv4-mapped": f"http://[::ffff:127.0.0.1]:{internal.port}/feed",
        "ipv6-loopback": f"http://[::1]:{internal.port}/feed",
        "decimal": f"http://2130706433:{internal.port}/feed",
        "metadata": "http://169.254.169.254/latest/meta-data/",
    }
    for name, target in inward.items():
        site.serve(f"/{name}", status=302, headers={"Location": target})
    site.serve("/page", status=301, headers={"Location": internal.url("/secret")})

    url = f"sqlite:///{Path(data_dir) / 'netns.db'}"
    migrate.upgrade(url)
    settings = Settings(database_url=url, data_dir=Path(data_dir), fetch_allow_private=False)
    out: dict[str, object] = {}
    with session_scope(url) as session:
        nl = create_newsletter(session, "news", "News", "News <news@example.org>")
        ids = {name: feeds.add_feed(session, nl, site.url(f"/{name}")).id for name in inward}
        ids["public"] = feeds.add_feed(session, nl, site.url("/feed.xml")).id
    out["polls"] = {name: feeds.poll(settings, fid).describe() for name, fid in ids.items()}
    try:
        pages.fetch_page(site.url("/page"), settings)
        out["page"] = "fetched"
    except ArticleError as exc:
        out["page"] = str(exc)
    with session_scope(url) as session:
        out["articles"] = session.query(Article).count()
    out["internal_requests"] = [s.path for s in internal.seen]
    allowed = settings.model_copy(update={"fetch_allow_private": True})
    out["allowed"] = feeds.fetch(site.url("/loopback"), allowed).status
    print(json.dumps(out))
    site.stop()
    internal.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
