"""The ingest rules as pure functions: sanitising, text, summaries, URLs, dates, pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailer.canonical import canonical_url, dedupe_key
from mailer.content.articles import dedupe_articles
from mailer.content.cleaner import cut_summary
from mailer.content.feeds import FeedError, backoff, parse
from mailer.content.incoming import (
    ArticleError,
    RawArticle,
    clean_topics,
    html_to_text,
    normalise,
    sanitise_html,
)
from mailer.content.pages import extract, parse_date
from tests.fixtures.feedserver import fixture

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
BASE = "https://site.example.com/news/feed.xml"


# -- sanitising -------------------------------------------------------------------


@pytest.mark.parametrize(
    "evil",
    [
        "<script>alert(1)</script>",
        "<style>body{display:none}</style>",
        '<img src="x.png" onerror="alert(1)">',
        '<a href="javascript:alert(1)">x</a>',
        '<a href=" JaVaScRiPt:alert(1)">x</a>',
        '<a href="java&#x09;script:alert(1)">x</a>',
        '<a href="vbscript:msgbox(1)">x</a>',
        '<img src="data:image/svg+xml;base64,PHN2Zz4=">',
        '<iframe src="https://evil.example"></iframe>',
        '<svg onload="alert(1)"><script>alert(2)</script></svg>',
        '<p style="background:url(javascript:alert(1))" onclick="alert(1)">x</p>',
        '<form action="https://evil.example"><input name="pw"></form>',
    ],
)
def test_script_style_handlers_and_javascript_urls_never_survive(evil: str) -> None:
    out = sanitise_html(f"<p>ok</p>{evil}", BASE).lower()
    for bad in ("<script", "<style", "onerror", "onclick", "onload", "javascript:", "vbscript:"):
        assert bad not in out
    assert "<iframe" not in out and "<form" not in out and "<input" not in out
    assert "data:" not in out and "style=" not in out
    assert "<p>ok</p>" in out


def test_relative_links_and_images_become_absolute_against_the_base() -> None:
    out = sanitise_html(
        '<p><a href="/about">a</a> <a href="../up">b</a> <img src="img/x.png" alt="x"></p>', BASE
    )
    assert 'href="https://site.example.com/about"' in out
    assert 'href="https://site.example.com/up"' in out
    assert 'src="https://site.example.com/news/img/x.png"' in out


def test_sanitised_html_keeps_only_the_allow_list() -> None:
    out = sanitise_html(
        '<div class="x"><h1>T</h1><p id="p"><strong>s</strong> <em>e</em></p><table><tr><td>t'
        "</td></tr></table><ul><li>i</li></ul></div>",
        BASE,
    )
    assert out == "T<p><strong>s</strong> <em>e</em></p>t<ul><li>i</li></ul>"


def test_links_get_rel_noopener() -> None:
    assert 'rel="noopener noreferrer"' in sanitise_html('<a href="https://x.example/">x</a>', BASE)


# -- text ----------------------------------------------------------------------------


def test_titles_are_text_with_entities_decoded_and_tags_dropped() -> None:
    assert html_to_text("Tom &amp; Jerry &lt;3") == "Tom & Jerry <3"
    assert html_to_text("<script>alert(1)</script>Breaking <b>news</b>") == "Breaking news"


def test_markup_escaped_twice_is_still_dropped_from_text() -> None:
    assert html_to_text("&lt;script&gt;alert(1)&lt;/script&gt;Hello") == "Hello"
    assert html_to_text("&lt;style&gt;p{}&lt;/style&gt;&lt;b&gt;Bold&lt;/b&gt; news") == "Bold news"


def test_a_title_about_a_tag_keeps_the_words_after_it() -> None:
    assert html_to_text("Why &lt;script&gt; tags are dangerous") == "Why tags are dangerous"
    assert html_to_text("Why <script> tags are dangerous") == "Why"  # real markup: code
    assert html_to_text("Escaping &lt;STYLE&gt; and &lt;svg&gt; in 2026") == "Escaping and in 2026"
    nested = "&amp;lt;xmp&amp;gt;" * 3 + "&lt;style&gt;&lt;xmp&gt;&lt;b&gt;x" * 3
    assert "<" not in html_to_text(nested)


def test_block_elements_do_not_glue_words_together() -> None:
    assert html_to_text("<p>one</p><p>two</p>three<br>four") == "one two three four"


def test_topic_names_are_text_one_per_slug_and_capped() -> None:
    assert clean_topics(["<b>Tech</b>", "tech", " ", "Мир"]) == ("Tech", "Мир")
    assert len(clean_topics([f"topic {i}" for i in range(100)])) == 20


# -- summaries -----------------------------------------------------------------------

TEXT = (
    "Just hours after Ukraine's military chief warned of a build-up, the U.S. granted limited "
    "permission. This marks a notable shift in U.S. policy. Various media outlets reported it "
    "first. Another sentence follows here."
)


def test_summary_shorter_than_the_limit_is_kept_whole() -> None:
    assert cut_summary("Short. Text.", 280) == "Short. Text."


def test_summary_is_cut_at_a_sentence_end_near_the_length() -> None:
    cut = cut_summary(TEXT, 130)
    assert cut == (
        "Just hours after Ukraine's military chief warned of a build-up, the U.S. granted "
        "limited permission. This marks a notable shift in U.S. policy."
    )
    assert TEXT.startswith(cut)


def test_summary_does_not_break_after_an_abbreviation() -> None:
    cut = cut_summary("The U.S. official said it was time to act now. And more text after.", 40)
    assert cut == "The U.S. official said it was time to act now."


def test_summary_without_a_sentence_end_is_cut_between_words_with_ellipsis() -> None:
    text = "word " * 60
    cut = cut_summary(text, 50)
    assert cut.endswith("…")
    assert all(w == "word" for w in cut[:-1].split())
    assert len(cut) <= 51


def test_summary_of_html_is_never_cut_inside_a_tag() -> None:
    html = "<p>" + (
        'Some <a href="https://x.example/a-very-long-link">linked words</a> here. ' * 20
    )
    cut = cut_summary(html_to_text(html), 100)
    assert "<" not in cut and "href" not in cut
    assert cut.endswith("here.")


def test_summary_handles_cyrillic_and_emoji() -> None:
    text = "Привет, мир. Это тест 🎉 с эмодзи. Ещё одно длинное предложение здесь идёт."
    assert cut_summary(text, 30) == "Привет, мир. Это тест 🎉 с эмодзи."


# -- URLs and dedupe -------------------------------------------------------------------


def test_canonical_url_drops_tracking_fragment_and_default_port() -> None:
    assert (
        canonical_url("HTTPS://News.Example.org:443/a/b?utm_source=x&id=3&fbclid=y#top")
        == "https://news.example.org/a/b?id=3"
    )


def test_dedupe_key_equates_scheme_www_and_trailing_slash_variants() -> None:
    keys = {
        dedupe_key(u)
        for u in (
            "https://www.example.org/story/",
            "http://example.org/story",
            "https://example.org/story?utm_medium=rss#comments",
        )
    }
    assert keys == {"example.org/story"}
    assert dedupe_key("https://example.org/story?id=1") != dedupe_key("https://example.org/story")


@dataclass
class _Item:
    url: str
    name: str


def test_dedupe_articles_keeps_the_first_of_each_story_in_order() -> None:
    items = [
        _Item("https://a.example/1", "first"),
        _Item("https://b.example/2", "other"),
        _Item("http://www.a.example/1/", "same story, second feed"),
    ]
    assert [i.name for i in dedupe_articles(items)] == ["first", "other"]


# -- normalise -------------------------------------------------------------------------


def test_missing_date_means_fetch_time_and_is_flagged() -> None:
    clean = normalise(RawArticle(url="https://x.example/a", title="t"), base_url=None, now=NOW)
    assert clean.published_at == NOW and not clean.date_given


def test_future_date_is_clamped_to_now() -> None:
    raw = RawArticle(url="https://x.example/a", title="t", published_at=NOW + timedelta(days=3))
    clean = normalise(raw, base_url=None, now=NOW)
    assert clean.published_at == NOW and not clean.date_given


def test_dates_are_stored_as_aware_utc() -> None:
    kyiv = timezone(timedelta(hours=3))
    raw = RawArticle(
        url="https://x.example/a", title="t", published_at=datetime(2024, 5, 31, 9, 15, tzinfo=kyiv)
    )
    clean = normalise(raw, base_url=None, now=NOW)
    assert clean.published_at == datetime(2024, 5, 31, 6, 15, tzinfo=UTC)
    assert clean.published_at.utcoffset() == timedelta(0)


def test_guid_falls_back_to_the_canonical_link() -> None:
    raw = RawArticle(url="/story?utm_source=rss#x", title="t")
    clean = normalise(raw, base_url="https://x.example/feed", now=NOW)
    assert clean.guid == clean.url == "https://x.example/story"


@pytest.mark.parametrize("url", [None, "", "javascript:alert(1)", "ftp://x.example/a", "/rel"])
def test_article_without_a_usable_link_is_refused_naming_the_url(url: str | None) -> None:
    with pytest.raises(ArticleError) as err:
        normalise(RawArticle(url=url, title="t"), base_url=None, now=NOW)
    assert err.value.field == "url"


def test_strict_mode_refuses_what_a_feed_would_have_cut() -> None:
    raw = RawArticle(url="https://x.example/a", title="x" * 1200)
    assert len(normalise(raw, base_url=None, now=NOW).title) <= 1000
    with pytest.raises(ArticleError) as err:
        normalise(raw, base_url=None, now=NOW, strict=True)
    assert err.value.field == "title"


def test_untitled_feed_item_borrows_its_first_words() -> None:
    raw = RawArticle(
        url="https://x.example/a", title="", summary_html="<p>Lead sentence. More.</p>"
    )
    assert normalise(raw, base_url=None, now=NOW).title == "Lead sentence. More."


def test_image_with_a_bad_scheme_is_dropped() -> None:
    raw = RawArticle(url="https://x.example/a", title="t", image_url="javascript:alert(1)")
    assert normalise(raw, base_url=None, now=NOW).image_url is None


# -- feeds ---------------------------------------------------------------------------------


def test_backoff_doubles_per_failure_and_is_capped() -> None:
    assert [backoff(900, n) for n in (1, 2, 3)] == [1800, 3600, 7200]
    assert backoff(900, 40) == 6 * 3600


def test_parse_refuses_a_document_that_is_not_a_feed() -> None:
    with pytest.raises(FeedError, match="not a readable feed"):
        parse(b"<html><body><p>Hello</p></body></html>", BASE)


@pytest.mark.parametrize(
    ("name", "title", "count"),
    [
        ("rss_unicode.xml", "Новости 🌍 World", 2),
        ("atom.xml", "Example Blog", 2),
        ("rss10.rdf", "RDF site", 1),
        ("rss091.xml", "Old school", 1),
    ],
)
def test_rss_and_atom_versions_parse(name: str, title: str, count: int) -> None:
    parsed = parse(fixture(f"feeds/{name}"), BASE)
    assert parsed.title == title
    assert len(parsed.entries) == count
    assert all(e.url for e in parsed.entries)


def test_atom_xml_base_resolves_entry_links() -> None:
    parsed = parse(fixture("feeds/atom.xml"), BASE)
    assert parsed.entries[0].url == "https://blog.example.com/posts/first-post"
    assert parsed.entries[0].author == "Jo Writer"
    assert parsed.entries[1].published_at == datetime(2024, 6, 2, 12, 0, tzinfo=UTC)


# -- pages -----------------------------------------------------------------------------------


def test_page_metadata_wins_over_page_text() -> None:
    raw = extract(fixture("pages/news_article.html"))
    clean = normalise(raw, base_url=raw.url, now=NOW)
    assert clean.url == "https://news.example.org/2024/05/31/tensions-rise-us-approves-strikes/"
    assert clean.title == (
        "Tensions rise as US approves Ukrainian strikes inside Russia with America-supplied weapons"
    )
    assert clean.summary.startswith("Just hours after Ukraine's military chief warned")
    assert clean.image_url == "https://news.example.org/wp-content/uploads/2024/05/kharkiv.jpg"
    assert clean.published_at == datetime(2024, 5, 31, 6, 15, tzinfo=UTC)
    assert clean.author == "Amara Okafor"
    assert clean.topics == ("Ukraine-Russia war", "NATO")


@pytest.mark.parametrize(
    "furniture",
    [
        "Search",
        "Close this search box",
        "Share on",
        "Share this article",
        "Also Read",
        "Also read",
        "Energy Transition",
        "Advertisement",
        "ads.example.net",
        "Subscribe To Our Newsletter",
        "Receive the latest news",
        "Get notified",
        "Magazine",
        "All rights reserved",
        "Politics",
        "31 May 2024",
    ],
)
def test_page_furniture_is_dropped_from_the_body(furniture: str) -> None:
    raw = extract(fixture("pages/news_article.html"))
    body = normalise(raw, base_url=raw.url, now=NOW).content_html
    assert furniture not in body


def test_page_body_keeps_the_article_text_sanitised() -> None:
    raw = extract(fixture("pages/news_article.html"))
    body = normalise(raw, base_url=raw.url, now=NOW).content_html
    assert body.startswith("<p>Just hours after Ukraine’s military chief")
    assert "Jens Stoltenberg" in body and "<h2>Shift in US Policy</h2>" in body
    assert 'href="https://news.example.org/sources/cbc"' in body
    assert "images/map.png" in body and "<figcaption>The Kharkiv region</figcaption>" in body
    for bad in ("<script", "onclick", "onerror", "javascript:", "<h1"):
        assert bad not in body


def test_page_without_metadata_falls_back_to_title_tag_and_first_paragraph() -> None:
    raw = extract(fixture("pages/bare_article.html"), "https://ledger.example.com/aid")
    clean = normalise(raw, base_url="https://ledger.example.com/aid", now=NOW)
    assert clean.title == "Evolving military aid: what Washington has sent"
    assert clean.summary.startswith("Washington’s position has evolved")  # UTF-8 without a charset
    assert clean.published_at == NOW and clean.image_url is None
    assert "Advertisement" not in clean.content_html
    assert "Related articles" not in clean.content_html
    assert "Close this search box" not in clean.content_html
    assert "international community" in clean.content_html


def test_page_with_json_ld_only_uses_it() -> None:
    raw = extract(fixture("pages/jsonld_only.html"))
    clean = normalise(raw, base_url=raw.url, now=NOW)
    assert clean.url == "https://ru.example.org/news/42"
    assert clean.title == "Киев получил разрешение 🚀"
    assert clean.summary == "Первый абзац статьи о решении США."
    assert clean.image_url == "https://ru.example.org/img/42.jpg"
    assert clean.published_at == datetime(2024, 5, 31, 12, 0, tzinfo=UTC)
    assert clean.topics == ("Мир",)


def test_page_in_a_legacy_charset_is_decoded_by_its_meta_tag() -> None:
    html = '<html><head><meta charset="windows-1251"><title>Заголовок статьи</title></head>'
    html += "<body><article><p>Текст статьи, достаточно длинный для абзаца.</p></article></body>"
    raw = extract((html + "</html>").encode("cp1251"), "https://ru.example.org/a")
    assert raw.title == "Заголовок статьи"
    summary = normalise(raw, base_url="https://ru.example.org/a", now=NOW).summary
    assert summary == "Текст статьи, достаточно длинный для абзаца."


@pytest.mark.parametrize("data", [b"", b"   \n"])
def test_empty_page_is_refused(data: bytes) -> None:
    with pytest.raises(ArticleError):
        extract(data, "https://x.example/a")


def test_page_dates_parse_iso_and_rfc2822_to_utc() -> None:
    assert parse_date("2024-05-31T09:15:00+03:00") == datetime(2024, 5, 31, 6, 15, tzinfo=UTC)
    assert parse_date("Fri, 31 May 2024 09:15:00 GMT") == datetime(2024, 5, 31, 9, 15, tzinfo=UTC)
    assert parse_date("2024-05-31") == datetime(2024, 5, 31, tzinfo=UTC)
    assert parse_date("yesterday") is None
