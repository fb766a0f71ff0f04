"""/docs, the operator API's page, works in a real browser under its own policy.

This machine cannot reach the CDN Swagger UI comes from, so the browser is handed a
stand-in for it at the same address: what is proved is that the page's policy lets
the CDN's script and the page's own inline start-up script run, which it did not.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from mailer.web.app import create_app
from mailer.web.docs import CDN
from tests.browser import chromium

# Stands in for swagger-ui-bundle.js: it shows what the page's start-up script asked for.
STAND_IN = """
window.SwaggerUIBundle = function (options) {
  document.querySelector(options.dom_id).textContent = "Swagger UI for " + options.url;
  return {};
};
SwaggerUIBundle.presets = {apis: {}};
SwaggerUIBundle.SwaggerUIStandalonePreset = {};
"""


def serve_the_cdn(route) -> None:
    if route.request.url.endswith(".js"):
        route.fulfill(status=200, content_type="application/javascript", body=STAND_IN)
    else:
        route.fulfill(status=200, content_type="text/css", body="")


def test_the_api_page_runs_in_a_browser_without_tripping_the_policy(live_server) -> None:
    with chromium() as browser:
        context = browser.new_context(base_url=live_server)
        context.route(f"{CDN}/**", serve_the_cdn)
        page = context.new_page()
        refused: list[str] = []
        page.on(
            "console",
            lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.goto("/docs")
        shown = page.wait_for_selector("#swagger-ui:has-text('Swagger UI for')", timeout=5000)
        assert shown is not None and shown.text_content() == "Swagger UI for /openapi.json"
        context.close()
    assert refused == []


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_only_the_api_page_loosens_the_policy_and_its_nonce_is_new_each_time(client) -> None:
    pages = [client.get("/docs"), client.get("/docs")]
    nonces = []
    for page in pages:
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        (nonce,) = re.findall(r"'nonce-([^']+)'", policy)
        assert CDN in policy and "frame-ancestors 'none'" in policy
        inline = re.findall(r"<script( [^>]*)?>", page.text)
        assert inline and all("src=" in attrs or f'nonce="{nonce}"' in attrs for attrs in inline)
        nonces.append(nonce)
    assert nonces[0] != nonces[1]
    home = client.get("/").headers["content-security-policy"]
    assert "script-src 'self';" in home and CDN not in home
    assert client.get("/redoc").status_code == 404
