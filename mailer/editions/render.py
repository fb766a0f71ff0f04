"""A selection as the digest templates see it, rendered with the markers where reader values go.

Rendered once per variant (prepare) or per preview; the per-reader work at
send time is then string substitution only (`mail.messages.Slots`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.content.cleaner import cut_summary
from mailer.editions.selection import Item, Selection
from mailer.mail.messages import Slot, Slots
from mailer.mail.rendering import EmailRenderer, RenderedEmail
from mailer.models import Frequency, Newsletter

KIND = "digest"


def safe_url(url: str | None) -> str:
    """Only web links go into mail; anything else (javascript:, data:) is dropped."""
    if url and url.strip().lower().startswith(("http://", "https://")):
        return url.strip()
    return ""


def context_for(
    settings: Settings,
    newsletter: Newsletter,
    items: Sequence[Item],
    compact: Sequence[Item],
    view_url: str,
    *,
    window_end: datetime,
    frequency: Frequency,
    slots: Slots,
) -> dict[str, Any]:
    """Everything the digest templates see; reader-specific values are this
    rendering's markers (`slots`), which no article text can spell. `compact`
    are the articles past MAILER_DIGEST_MAX_ARTICLES: title and link only."""
    articles: list[dict[str, Any]] = [
        {
            "title": " ".join(item.title.split()) or "(untitled)",
            "url": safe_url(item.url),
            "summary": cut_summary(item.summary, settings.summary_length),
            "image_url": safe_url(item.image_url),
            "author": item.author or "",
            "published": item.published_at.strftime("%d %b %Y"),
            "topics": list(item.topics),
        }
        for item in items
    ]
    listed = [
        {"title": " ".join(item.title.split()) or "(untitled)", "url": safe_url(item.url)}
        for item in compact
    ]
    site = safe_url(newsletter.site_url) or settings.base_url
    titles = ", ".join(a["title"] for a in articles[:3])
    return {
        "newsletter_name": newsletter.name,
        "frequency": frequency.value,
        "edition_date": window_end.strftime("%d %B %Y"),
        "articles": articles,
        "more_articles": listed,
        "site_url": site,
        "view_url": view_url,
        "preheader": cut_summary(titles, 140),
        "email_placeholder": slots.marker(Slot.EMAIL),
        "unsubscribe_url": slots.marker(Slot.UNSUBSCRIBE_URL),
        "preferences_url": slots.marker(Slot.PREFERENCES_URL),
    }


def render_selection(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    newsletter: Newsletter,
    by_id: dict[int, Item],
    selection: Selection,
    view_url: str,
    *,
    window_end: datetime,
    frequency: Frequency,
    slots: Slots,
) -> RenderedEmail:
    items = [by_id[i] for i in selection.article_ids]
    context = context_for(
        settings,
        newsletter,
        items[: selection.full],
        items[selection.full :],
        view_url,
        window_end=window_end,
        frequency=frequency,
        slots=slots,
    )
    return renderer.render(KIND, context)
