"""Properties of the cleaner over generated articles: cleaning never grows the text,
never leaves a script, and cleaning what it made changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from mailer.content.cleaner import clean
from mailer.content.incoming import CleanArticle, RawArticle, normalise
from tests.helpers.articles import html_fragments, scripts_in, visible_characters

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
URL = "https://news.example.org/story"
LENGTH = 120

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Article-shaped HTML most of the time, and now and then any text at all.
SOURCES = st.one_of(html_fragments(), html_fragments(), st.text(max_size=300))


def stored(summary: str | None, content: str | None) -> CleanArticle:
    raw = RawArticle(url=URL, title="Ferry news", summary_html=summary, content_html=content)
    return normalise(raw, base_url=URL, now=NOW, summary_length=LENGTH)


@SETTINGS
@given(SOURCES)
def test_cleaning_never_grows_the_text(source: str) -> None:
    sent = visible_characters(source)
    article = stored(source, source)
    assert visible_characters(article.content_html) <= sent
    assert visible_characters(clean(source).html) <= sent
    assert len("".join(article.summary.split())) <= sent


@SETTINGS
@given(SOURCES, SOURCES)
def test_cleaning_never_leaves_a_script(summary: str, content: str) -> None:
    article = stored(summary, content)
    assert not [s for s in scripts_in(clean(content).html) if s == "<script>"]
    assert scripts_in(article.content_html) == []
    assert "<script" not in article.summary.lower()


@SETTINGS
@given(SOURCES, SOURCES)
def test_cleaning_what_the_cleaner_made_changes_nothing(summary: str, content: str) -> None:
    """Its HTML and lead are a fixed point of the cleaner, and a summary it made, sent
    again as a summary, comes back as it was (our "…" is not taken for the source's)."""
    note(f"summary={summary!r}")
    note(f"content={content!r}")
    once = clean(content)
    twice = clean(once.html)
    assert (twice.html, twice.lead, twice.has_lead) == (once.html, once.lead, once.has_lead)
    made = stored(summary, content).summary
    assert stored(made, None).summary == made
