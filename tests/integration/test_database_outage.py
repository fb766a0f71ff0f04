"""While PostgreSQL is unreachable the web side answers 503 with Retry-After, not a trace."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from mailer.readers import newsletters
from mailer.web.app import create_app
from tests.proxy import CuttableProxy


def test_web_answers_503_with_retry_after_while_database_is_down_then_recovers(settings, session):
    newsletters.create_newsletter(session, "n", "N", "N <n@example.org>")
    session.commit()
    url = make_url(settings.database)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        http = TestClient(
            create_app(settings.model_copy(update={"database_url": proxied})),
            raise_server_exceptions=False,
        )
        assert http.get("/subscribe/n").status_code == 200

        proxy.cut()
        down = http.get("/subscribe/n")
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "10"
        assert "Traceback" not in down.text and "psycopg" not in down.text
        posted = http.post("/subscribe", json={"email": "a@example.org", "newsletter": "n"})
        assert posted.status_code == 503

        proxy.restore()
        assert http.get("/subscribe/n").status_code == 200
        assert (
            http.post("/subscribe", json={"email": "a@example.org", "newsletter": "n"}).status_code
            == 202
        )
    finally:
        proxy.close()
