"""One rendered variant, many readers: what changes per reader and what must not."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.config import Settings
from mailer.editions.render import context_for
from mailer.editions.selection import Item
from mailer.mail.links import Links
from mailer.mail.messages import Slots
from mailer.mail.rendering import EmailRenderer
from mailer.mail.tokens import Purpose
from mailer.models import Frequency, Newsletter, Subscription
from mailer.sending.outgoing import message_template, personalise
from tests.helpers import hostile

NOW = datetime(2024, 5, 6, 8, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        secret_key="unit-secret", base_url="https://mail.example.org", data_dir=tmp_path
    )


@pytest.fixture
def newsletter() -> Newsletter:
    return Newsletter(
        id=1, slug="news", name="The News", sender="The News <news@news.example.org>",
        site_url="https://news.example.org",
    )  # fmt: skip


def items() -> list[Item]:
    return [
        Item(1, "https://news.example.org/a?x=1&y=2", "Tom & Jerry <script>alert(1)</script>",
             "A summary " * 80, "https://img.example.org/a.png", "Ann", NOW, frozenset()),
        Item(2, "javascript:alert(1)", "Sneaky link", "", "data:image/png;base64,xx", None,
             NOW, frozenset()),
    ]  # fmt: skip


@pytest.fixture
def template(settings, newsletter):
    return render_template(settings, newsletter, items())


def render_template(settings, newsletter, articles):
    """The variant's template as prepare makes it: rendered once, with fresh slots."""
    renderer = EmailRenderer(settings.email_templates)
    slots = Slots.fresh()
    context = context_for(
        settings, newsletter, articles, articles[-1:], "https://mail.example.org/digest/1?v=k",
        window_end=NOW, frequency=Frequency.DAILY, slots=slots,
    )  # fmt: skip
    rendered = renderer.render("digest", context)
    return message_template(
        settings, newsletter, rendered.subject, rendered.html, rendered.text, slots
    )


def reader(sub_id: int, generation: int = 1) -> Subscription:
    return Subscription(id=sub_id, generation=generation)


def build(template, settings, sub_id: int, email: str):
    data = b"".join(
        personalise(
            template, Links.from_settings(settings), reader(sub_id), email, f"<m{sub_id}@x>"
        )
    )
    return data, message_from_bytes(data, policy=policy.default)


@pytest.fixture
def still_clock(monkeypatch):
    """Tokens carry the second they were signed in: one made for the message and one
    made here to compare with it differ when a second boundary falls between them."""
    from itsdangerous.timed import TimestampSigner

    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: 1_790_000_000)


def test_each_reader_gets_their_own_address_tokens_and_message_id(template, settings, still_clock):
    links = Links.from_settings(settings)
    _, first = build(template, settings, 7, "ann@example.org")
    _, second = build(template, settings, 8, "bob@example.org")
    for msg, sub_id, email in ((first, 7, "ann@example.org"), (second, 8, "bob@example.org")):
        text, html = (p.get_content() for p in msg.iter_parts())
        unsubscribe = links.unsubscribe(reader(sub_id))
        assert msg["To"] == email and msg["Message-ID"] == f"<m{sub_id}@x>"
        assert msg["List-Unsubscribe"].startswith(f"<{unsubscribe}>")
        assert unsubscribe in text and f'href="{unsubscribe}"' in html
        assert links.preferences(reader(sub_id)) in text
        assert email in html and email in text
        token = unsubscribe.rsplit("/", 1)[1]
        assert links.tokens.read(Purpose.UNSUBSCRIBE, token).subscription_id == sub_id
        assert "__MAILER_" not in text + html
    assert "bob@example.org" not in first.as_string()


def test_message_has_the_bulk_headers_and_text_before_html(template, settings):
    data, msg = build(template, settings, 7, "ann@example.org")
    assert msg["Precedence"] == "bulk"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "The News <news.mail.example.org>"
    assert msg["Subject"] == "The News: Tom & Jerry <script>alert(1)</script> and 1 more"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert re.search(rb"[^\r]\n", data) is None


def test_html_is_escaped_inlined_and_only_carries_web_links(template, settings):
    _, msg = build(template, settings, 7, "ann@example.org")
    html = msg.get_body(("html",)).get_content()
    assert "<script>" not in html and "Tom &amp; Jerry &lt;script&gt;" in html
    assert "javascript:" not in html and "data:image" not in html
    assert 'href="https://news.example.org/a?x=1&amp;y=2"' in html
    assert 'style="' in html  # premailer inlined the stylesheet
    assert "max-width: 620px" in html  # the responsive rules stay in <style>
    assert "View in your browser" in html and "Also new" in html
    # Past the cap, an article is listed by title alone when its link is no web link.
    assert "<li" in html and "Sneaky link</li>" in html


def test_text_part_is_written_from_the_data_not_stripped_html(template, settings):
    _, msg = build(template, settings, 7, "ann@example.org")
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "1. Tom & Jerry <script>alert(1)</script>" in text
    assert "https://news.example.org/a?x=1&y=2" in text
    assert "2. Sneaky link" in text and "javascript:" not in text
    assert "Also new:\n- Sneaky link\n" in text
    # Links are numbered footnotes listed at the end, so the prose wraps at 72.
    notes = dict(re.findall(r"^\[(\d+)\] (\S+)$", text, re.M))
    assert "https://news.example.org/a?x=1&y=2" in notes.values()
    title_ref = re.search(r"^1\. Tom & Jerry <script>alert\(1\)</script> \[(\d+)\]$", text, re.M)
    assert title_ref and notes[title_ref.group(1)] == "https://news.example.org/a?x=1&y=2"
    assert "<table" not in text and "&amp;" not in text
    assert max(len(line) for line in text.splitlines() if "://" not in line) <= 72


marker_text = st.lists(
    st.one_of(st.sampled_from(hostile.MARKERS), st.text(max_size=8)), max_size=6
).map("".join)


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    title=marker_text,
    summary=marker_text,
    author=marker_text,
    topic=marker_text,
    query=marker_text,
)
def test_no_article_text_ever_moves_a_readers_values_out_of_their_slots(
    title, summary, author, topic, query
):
    """Whatever an article's fields hold (every marker spelling mixed with anything),
    the reader's address and links appear exactly once in each part, in the footer."""
    config = Settings(
        secret_key="unit-secret", base_url="https://mail.example.org", data_dir="/nonexistent"
    )
    newsletter = Newsletter(id=1, slug="news", name="News", sender="News <n@news.example.org>")
    url = "https://evil.example/a?q=" + quote(query)
    article = Item(1, url, title, summary, url + "&img", author, NOW, frozenset(), (topic,))
    template = render_template(config, newsletter, [article])
    _, msg = build(template, config, 7, "ann@example.org")
    for part in (p.get_content() for p in msg.iter_parts()):
        hostile.only_in_slots(part, hostile.personal(config.base_url, "ann@example.org"))


def test_control_characters_in_a_title_become_blanks_in_a_one_line_subject(settings, newsletter):
    """Found by the property above: a NUL in a title reached the Subject and the whole
    variant could not be built (HeaderInjection)."""
    title = "Storm\x00warning\x1b[31m over\r\nthe\x85coast\x7f"
    article = Item(1, "https://news.example.org/s", title, "", None, None, NOW, frozenset())
    template = render_template(settings, newsletter, [article])
    _, msg = build(template, settings, 7, "ann@example.org")
    assert msg["Subject"] == "The News: Storm warning [31m over the coast"
