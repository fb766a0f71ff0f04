"""The built-in sink's outbox: what the embedded default "sent", readable in a browser.

Only mounted when no MAILER_SMTP_URL is set (see app.py), so it never shows
real mail. A mail's HTML is untrusted content: it is served from its own
route under a CSP that allows no scripts and no fetches except images, and
framed with a sandbox, so a mail can't run code with the app's origin.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from mailer.mail.sink import Outbox, OutboxItem
from mailer.web.deps import SettingsDep
from mailer.web.headers import mail_html_headers
from mailer.web.pages import page

router = APIRouter(prefix="/outbox", tags=["outbox"], include_in_schema=False)

LIST_LIMIT = 200
# Maildir keys are "<time>.<unique>.<host>"; anything else is not ours to look up.
KEY = re.compile(r"^[A-Za-z0-9._:,-]{1,200}$")
URL_IN_TEXT = re.compile(r"https?://[^\s<>\"')\]]+")

# The mail's own HTML, which the outbox page frames.
RAW_HTML_HEADERS = mail_html_headers(framed_by_us=True)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href and href.startswith(("http://", "https://")):
                self.hrefs.append(href)


def mail_links(item: OutboxItem) -> list[str]:
    """Every link in the mail, in order, once: in a sandboxed frame they can't be followed."""
    parser = _Links()
    parser.feed(item.body("html"))
    found = parser.hrefs + URL_IN_TEXT.findall(item.body("plain"))
    for name in ("List-Unsubscribe",):
        found += re.findall(r"<(https?://[^>]+)>", str(item.message.get(name, "")))
    return list(dict.fromkeys(found))


def received_at(item: OutboxItem) -> str:
    return datetime.fromtimestamp(item.received, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _outbox(settings: SettingsDep) -> Outbox:
    return Outbox(settings.outbox_dir)


def _item(settings: SettingsDep, key: str) -> OutboxItem:
    item = _outbox(settings).get(key) if KEY.match(key) else None
    if item is None:
        raise HTTPException(status_code=404, detail="There is no such mail in the outbox.")
    return item


@router.get("", response_class=HTMLResponse)
def outbox_list(request: Request, settings: SettingsDep, to: str = "") -> HTMLResponse:
    """Newest first; `?to=` narrows to one recipient, the usual question while testing."""
    items = _outbox(settings).items(limit=LIST_LIMIT if not to else 10**9)
    if to:
        needle = to.strip().lower()
        items = [i for i in items if needle in i.to.lower()][:LIST_LIMIT]
    rows = [
        {"key": i.key, "to": i.to, "subject": i.subject, "received": received_at(i)} for i in items
    ]
    return page(
        request,
        "outbox.html",
        rows=rows,
        to=to,
        limit=LIST_LIMIT,
        directory=str(settings.outbox_dir.resolve()),
    )


@router.get("/{key}", response_class=HTMLResponse)
def outbox_mail(request: Request, settings: SettingsDep, key: str) -> HTMLResponse:
    item = _item(settings, key)
    headers = [(name, str(value)) for name, value in item.message.items()]
    return page(
        request,
        "outbox_mail.html",
        key=item.key,
        subject=item.subject,
        received=received_at(item),
        headers=headers,
        text=item.body("plain"),
        has_html=bool(item.body("html")),
        links=mail_links(item),
    )


@router.get("/{key}/html")
def outbox_mail_html(settings: SettingsDep, key: str) -> Response:
    """The HTML part alone, for the sandboxed frame on the mail's page."""
    html = _item(settings, key).body("html")
    if not html:
        raise HTTPException(status_code=404, detail="this mail has no HTML part")
    return HTMLResponse(html, headers=RAW_HTML_HEADERS)


@router.get("/{key}/raw")
def outbox_mail_raw(settings: SettingsDep, key: str) -> Response:
    """The message as the sink received it, to check MIME structure and encodings."""
    item = _item(settings, key)
    return Response(
        item.message.as_bytes(),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )
