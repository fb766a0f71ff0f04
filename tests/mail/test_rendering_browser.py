"""Our mail in a real browser (Debian's chromium, driven by playwright): phone and desktop
widths, light and dark, exactly the HTML part a reader receives.

Mail clients are not browsers, but a layout that scrolls sideways at 375 px
or loses its contrast under prefers-color-scheme: dark in chromium does no
better in Apple Mail or the Gmail app, which are WebKit/Blink underneath.
"""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest

from tests.browser import chromium
from tests.helpers.samples import READER, Sample, all_kinds
from tests.helpers.samples import digest as build_digest

# WCAG AA: 4.5:1 for body text, 3:1 for large text (24 px, or 18.66 px bold).
CONTRAST = """
() => {
  const parse = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = ({r, g, b}) => { const f = v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = el => { for (; el; el = el.parentElement) {
    const c = parse(getComputedStyle(el).backgroundColor); if (c && c.a > 0.5) return c; }
    return {r: 255, g: 255, b: 255, a: 1}; };
  const poor = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const node = walk.currentNode, el = node.parentElement;
    if (!node.textContent.trim() || !el.getClientRects().length) continue;
    const style = getComputedStyle(el), fg = parse(style.color), bg = background(el);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    if (ratio < needed) poor.push(`${node.textContent.trim().slice(0, 40)}: ${style.color} on ` +
      `rgb(${bg.r}, ${bg.g}, ${bg.b}) = ${ratio.toFixed(2)}`);
  }
  return poor;
}
"""

IMAGES_WITHOUT_SIZE_OR_ALT = """
() => [...document.images]
  .filter(img => !['width', 'height', 'alt'].every(name => img.hasAttribute(name)))
  .map(img => img.outerHTML.slice(0, 120))
"""


def html_part(sample: Sample) -> str:
    msg = message_from_bytes(sample.data, policy=policy.default)
    body = msg.get_body(("html",))
    assert body is not None, f"{sample.kind} has no HTML part"
    return str(body.get_content())


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def mails(session, settings, monkeypatch):
    from tests.conftest import configure

    real = configure(monkeypatch, base_url="https://news.example.org")
    return {s.kind: html_part(s) for s in all_kinds(session, real)}


def open_mail(browser, html: str, width: int, scheme: str = "light"):
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page.route("**/*", lambda route: route.abort())  # no network: images stay unloaded
    page.set_content(html, wait_until="domcontentloaded")
    return page


KINDS = ["confirm", "welcome", "digest"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_mail_scrolls_sideways_on_a_phone_or_a_desktop(browser, mails, kind):
    for width in (375, 600):
        page = open_mail(browser, mails[kind], width)
        scroll = page.evaluate("document.documentElement.scrollWidth")
        page.close()
        assert scroll <= width, f"{kind} is {scroll}px wide at {width}px"


@pytest.mark.parametrize(
    "kind",
    [
        "confirm",
        "welcome",
        "digest",
    ],
)
def test_every_image_says_its_size_and_has_alt_text(browser, mails, kind):
    page = open_mail(browser, mails[kind], 375)
    missing = page.evaluate(IMAGES_WITHOUT_SIZE_OR_ALT)
    page.close()
    assert missing == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("kind", KINDS)
def test_text_keeps_its_contrast_in_light_and_dark_mode(browser, mails, kind, scheme):
    page = open_mail(browser, mails[kind], 375, scheme)
    poor = page.evaluate(CONTRAST)
    page.close()
    assert poor == [], f"{kind} in {scheme} mode"


def test_a_digest_of_the_default_article_cap_stays_under_100_kb(session, settings):
    from mailer.mail.rendering import EmailRenderer
    from mailer.models import Subscription
    from mailer.readers import newsletters
    from mailer.readers import subscriptions as subs

    newsletters.create_newsletter(
        session, "weekly", "Weekly News", "Weekly News <news@example.org>"
    )
    subs.subscribe(session, email=READER, newsletter="weekly", confirmed=True)
    sub = session.query(Subscription).one()
    html, _ = build_digest(session, settings, EmailRenderer(settings.email_templates), sub)
    assert settings.digest_max_articles == 10
    assert len(html.encode()) < 100 * 1024, f"{len(html.encode())} bytes of HTML"
    session.rollback()


# -- the text part -----------------------------------------------------------------------


def test_confirm_and_welcome_text_reads_on_its_own_with_links_as_footnotes(session, settings):
    for sample in all_kinds(session, settings)[:2]:
        msg = message_from_bytes(sample.data, policy=policy.default)
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        prose, _, notes = text.rstrip().rpartition("\n\n[1] ")
        assert notes, f"{sample.kind}: no footnotes"
        assert "://" not in prose, f"{sample.kind}: a URL in the prose"
        assert all(len(line) <= 72 for line in prose.splitlines()), sample.kind
        assert "[1]" in prose
        for n, line in enumerate(("[1] " + notes).splitlines(), 1):
            assert line.startswith(f"[{n}] {settings.base_url}/")


def test_html_becomes_text_with_its_links_footnoted_in_one_numbering():
    from mailer.mail.rendering import GLUE, Footnotes

    notes = Footnotes()
    first = notes.ref("Read the article", "https://example.org/a")
    text = notes.html_to_text(
        "<p>Rain <b>today</b>; see <a href='https://example.org/b'>the forecast</a>.</p>"
        "<ul><li><a href='https://example.org/a'>again</a></li>"
        "<li><a href='javascript:alert(1)'>no link</a></li></ul><script>x()</script>"
    )
    assert first == f"Read the article{GLUE}[1]"
    assert text.replace(GLUE, " ") == "Rain today; see the forecast [2].\n\n- again [1]\n- no link"
    assert notes.render() == "\n[1] https://example.org/a\n[2] https://example.org/b\n"
