"""While Redis is unreachable the web answers 503 with Retry-After, as for the database.

Redis holds the request counters of every rate-limited route (subscribe, the
admin login) when it is the broker. The test puts a cuttable TCP proxy
between the web app and the real Redis, cuts it, and asks each route that
counts requests.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from mailer.readers import newsletters
from mailer.web.app import create_app
from tests.proxy import CuttableProxy


def test_subscribe_and_admin_login_answer_503_while_redis_is_down_then_recover(
    settings, session, redis_url
):
    newsletters.create_newsletter(session, "n", "N", "N <n@example.org>")
    session.commit()
    proxy = CuttableProxy("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    try:
        app = create_app(
            settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{proxy.port}/0"})
        )
        http = TestClient(app, raise_server_exceptions=False)
        assert http.post("/admin/login", data={"token": "wrong"}).status_code == 401

        proxy.cut()
        for answer in (
            http.post("/subscribe", json={"email": "a@example.org", "newsletter": "n"}),
            http.post("/subscribe", data={"email": "a@example.org", "newsletter": "n"}),
            http.post("/admin/login", data={"token": "wrong"}),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "10"
            assert "Traceback" not in answer.text and "redis" not in answer.text.lower()

        proxy.restore()
        assert http.post("/admin/login", data={"token": "wrong"}).status_code == 401
    finally:
        proxy.close()
