"""Generated article HTML for property tests: the tags, classes, phrases and marks that
real feed items carry, furniture among them, nested at random."""

from __future__ import annotations

import html

from hypothesis import strategies as st
from lxml import etree

from mailer.content.cleaner import PHRASES

SENTENCES = (
    "The council approved the new ferry timetable on Thursday.",
    "Services will run every twenty minutes at peak times.",
    "“People have waited long enough,” said Anne Price.",
    "Share prices fell on Monday.",
    "Read more books, the library says.",
    "Нагадаємо, що раніше уряд ухвалив рішення.",
    "Mehr als 200 Menschen kamen zum Deichlauf.",
    "U.S. officials said so",
    "31 May 2024",
    "Stand: 31.05.2024 08:45 Uhr",
    "Ferry news",
    "Kharkiv",
)
MARKS = ("…", "[…]", "[...]", "...", "→", "»", ":", " ", "&amp;", "&lt;script&gt;", "<", "&#8230;")
PHRASE_TEXTS = tuple(
    dict.fromkeys(
        phrase
        for lang in PHRASES.values()
        for kind in (lang.labels, lang.promos, lang.lead_ins, lang.more)
        for phrase in kind
    )
)
CONTAINERS = (
    "p",
    "div",
    "span",
    "a",
    "strong",
    "em",
    "b",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "blockquote",
    "figure",
    "figcaption",
    "section",
    "aside",
    "header",
    "footer",
    "script",
    "style",
    "form",
    "table",
    "td",
    "pre",
    "x-odd",
)
VOIDS = ("br", "img", "hr", "input")
ATTRIBUTES = st.dictionaries(
    st.sampled_from(("class", "id", "href", "src", "width", "height", "style", "role")),
    st.sampled_from(
        (
            "share",
            "ad-slot",
            "entry-content",
            "sharedaddy",
            "kg-signup-card",
            "related",
            "meta",
            "1",
            "600",
            "display:none",
            "/x",
            "https://pixel.wp.com/b.gif",
            "https://example.org/photo.jpg",
            "javascript:alert(1)",
            "navigation",
        )
    ),
    max_size=3,
)
TEXTS = st.one_of(
    st.sampled_from(SENTENCES),
    st.sampled_from(PHRASE_TEXTS).map(str.title),
    st.sampled_from(PHRASE_TEXTS),
    st.sampled_from(MARKS),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(html.escape),
)


def _attributes(values: dict[str, str]) -> str:
    return "".join(f' {k}="{html.escape(v)}"' for k, v in values.items())


def _element(tag: str, attributes: dict[str, str], children: list[str]) -> str:
    return f"<{tag}{_attributes(attributes)}>{''.join(children)}</{tag}>"


def _void(tag: str, attributes: dict[str, str]) -> str:
    return f"<{tag}{_attributes(attributes)}>"


def html_fragments() -> st.SearchStrategy[str]:
    leaves = st.one_of(TEXTS, st.builds(_void, st.sampled_from(VOIDS), ATTRIBUTES))
    return st.recursive(
        leaves,
        lambda inner: st.builds(
            _element, st.sampled_from(CONTAINERS), ATTRIBUTES, st.lists(inner, max_size=5)
        ),
        max_leaves=30,
    ).map(str)


def visible_characters(value: str) -> int:
    """How much text a reader of `value` sees: its characters other than spaces, as
    libxml2 reads the HTML, without what scripts and styles hold. Spaces are left out
    because where a removed block stood is a matter of one space more or less."""
    if not value.strip():
        return 0
    clean = "".join(ch for ch in value if ch in "\t\n\r" or ch >= " ")
    root = etree.fromstring(clean, etree.HTMLParser(remove_comments=True, remove_pis=True))
    if root is None:
        return 0
    for hidden in root.xpath("//script|//style|//noscript|//template|//head"):
        hidden.clear(keep_tail=True)
    return len("".join("".join(root.itertext()).split()))


def scripts_in(value: str) -> list[str]:
    """Everything in `value` that could run: script elements, event-handler attributes,
    and links or sources with a script or data scheme."""
    if not value.strip():
        return []
    root = etree.fromstring(value, etree.HTMLParser())
    if root is None:
        return []
    found = [f"<{el.tag}>" for el in root.iter("script")]
    for el in root.iter():
        for name, attribute in el.attrib.items():
            scheme = "".join(attribute.split()).lower().split(":", 1)[0]
            if name.lower().startswith("on"):
                found.append(f"{name}=")
            elif name.lower() in ("href", "src") and scheme in ("javascript", "vbscript", "data"):
                found.append(f"{name}={attribute}")
    return found
