"""One article cleaner for every way an article arrives: what is not the article goes.

Feeds (RSS `description` and `content:encoded`, Atom `summary` and
`content`), the push API (`summary`, `content_html`) and page import all
send what they got through `clean` before `incoming.normalise` sanitises
it, and the summary a digest shows comes from `summarise`. So a reader
gets the article's own lead whichever way it came: never a search box,
"Also read: …", a share bar, "Advertisement", a newsletter sign-up, "The
post … appeared first on …", "Continue reading →", "[…]" or a tracking
pixel.

Every rule lives in the "rules" section below, and every phrase in
`PHRASES`, one entry per language. To teach the cleaner a new phrase, add
it there (lower case); nothing else needs to change.

What the cleaner removes (text lying loose beside blocks is first made a
paragraph, so plain text and HTML meet the same rules):

1. elements that are never article text (`FURNITURE_TAGS`: scripts, forms,
   navigation, asides, embeds…), comments, and tags with no real name;
2. elements whose class, id or role says they are furniture
   (`FURNITURE_WORDS`, `FURNITURE_ROLES`) or that are hidden, when they hold
   less than `FURNITURE_MAX_SHARE` of the text (so a wrapper that happens
   to say "has-sidebar" can't take the article with it);
3. tracking pixels (an image 1 pixel wide or high, or from `TRACKERS`) and
   links left with nothing in them;
4. blocks that are furniture by their words (`PHRASES`): a block that *is*
   a label ("Advertisement"), a short block that starts with a promotion
   ("Subscribe to our newsletter…"), a lead-in to other articles ("Also
   read", "Читайте також", "Lesen Sie auch") standing alone, before a colon
   or before links only (with the list of links after it), and syndication
   credits ("The post … appeared first on …");
5. before the lead: the headline repeated, an `<h1>` and date lines; after
   the article's last paragraph, once furniture has begun, the labels among
   it ("Magazine");
6. at the end of a block, a link to the rest of the article ("Continue
   reading →") and an inline "Also read: <a>…</a>";
7. blocks left empty.

The rules run again while a round still finds something (removing one
piece of furniture can bring another rule into play), so cleaning what the
cleaner made changes nothing.

Conservative by design: when in doubt, keep. A block is never furniture
because it merely contains a word: "Read more books, the minister said"
stays, as do quotes (`KEEPS_PHRASES`), lists and headings inside the
article. Phrases are matched on whole words at the start of a block.

The lead is the first paragraph of the article's own text: not a heading,
a caption, a label (short and with no sentence in it), a date line or the
headline repeated. The summary is the text from the lead on, with the
source's own "[…]" and "Continue reading" gone, cut at a sentence near the
configured length (`cut_summary`).

Outside text is hostile, so the work is bounded whatever arrives: input is
cut at `MAX_CONTENT` characters; libxml2 parses it (it stops nesting at 255
levels, which also keeps nh3, quadratic on deep nesting, fast on what it
gets from here); every walk over the tree is a loop, never recursion; a
block's words are read only up to `PHRASE_SCAN` characters; and the regular
expressions have no nested quantifiers and run on bounded text.

Why one module of this size: the rule table (`PHRASES`, the furniture
words and tags, the limits) and the engine that applies it are read
together. Each rule's meaning is in how the engine walks the tree, and
the order of the rounds is part of the rule; split apart, a change to one
half could not be checked without the other open beside it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

# -- rules -------------------------------------------------------------------------

# Characters of one field the cleaner looks at; the store keeps no more either.
MAX_CONTENT = 500_000
# Characters of a block read to decide whether it is furniture: furniture is short.
PHRASE_SCAN = 300
# A promotion ("Subscribe to our newsletter …") or a credit is at most this long.
PROMO_MAX = 200
CREDIT_MAX = 400
# Shorter than this and with no sentence in it, a block is a label, never the lead.
LEAD_MIN_CHARS = 40
# A block of links after an "Also read" is at most this long; at most this many follow.
LINK_LIST_MAX = 2000
LINK_LISTS_MAX = 10
FURNITURE_MAX_SHARE = 0.4
# Rounds of the rules at most: they run again while a round still finds something, which
# on real articles is twice (the second finds nothing).
ROUNDS = 4

# Elements that are never part of an article's text: removed with everything inside.
FURNITURE_TAGS = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "form",
        "nav",
        "header",
        "footer",
        "aside",
        "iframe",
        "frame",
        "object",
        "embed",
        "video",
        "audio",
        "canvas",
        "button",
        "input",
        "select",
        "textarea",
        "svg",
        "math",
        "dialog",
        "title",
        "meta",
        "link",
        "base",
    }
)
# A <header> or <footer> inside these is the quote's or figure's own (its source).
KEEPS_OWN_FURNITURE = frozenset({"blockquote", "figure"})
# class/id words that mark furniture (matched per word, so "masthead" is not "head").
FURNITURE_WORDS = frozenset(
    {
        "a2a",
        "ad",
        "ads",
        "adsense",
        "addtoany",
        "advert",
        "advertisement",
        "banner",
        "breadcrumb",
        "breadcrumbs",
        "byline",
        "comment",
        "comments",
        "cookie",
        "cta",
        "feedflare",
        "menu",
        "meta",
        "modal",
        "newsletter",
        "outbrain",
        "popup",
        "promo",
        "related",
        "relatedposts",
        "search",
        "share",
        "sharedaddy",
        "sharing",
        "sidebar",
        "signup",
        "social",
        "sponsor",
        "sponsored",
        "subscribe",
        "subscription",
        "taboola",
        "tags",
        "widget",
        "yarpp",
    }
)
FURNITURE_ROLES = frozenset({"search", "navigation", "complementary", "banner", "contentinfo"})
# (host, path prefix) of images that only count opens; 1-pixel images are pixels anyway.
TRACKERS = (
    ("pixel.wp.com", "/"),
    ("stats.wp.com", "/"),
    ("stats.wordpress.com", "/"),
    ("feeds.feedburner.com", "/~r/"),
    ("feeds.feedburner.com", "/~ff/"),
    ("medium.com", "/_/stat"),
    ("www.google-analytics.com", "/"),
    ("google-analytics.com", "/"),
    ("sb.scorecardresearch.com", "/"),
    ("pixel.quantserve.com", "/"),
)

BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "center",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "li",
        "main",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "td",
        "th",
        "tr",
        "ul",
    }
)
# Where text reads as separate words either side (`incoming.html_to_text` spaces them too).
TEXT_BREAKS = frozenset(
    {
        *("p", "br", "div", "li", "ul", "ol", "blockquote", "tr", "td", "th", "section"),
        *("article", "figure", "figcaption", "pre", "h1", "h2", "h3", "h4", "h5", "h6"),
    }
)
HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
BREAKS_PARAGRAPHS = BLOCK_TAGS | {"hr", "dir", "menu", "fieldset", "listing", "xmp", "plaintext"}
# Loose text beside blocks becomes paragraphs, but not in these: a <p> inside a heading or
# a paragraph is split off when the HTML is read again; lists and tables hold no <p>.
NO_PARAGRAPHS_INSIDE = HEADINGS | {
    *("p", "pre", "hr", "ul", "ol", "dl", "table", "tr"),
    *("b", "i", "u", "s", "small", "big", "tt", "strike"),  # closed by libxml2 at a <p>
}
CAPTIONS = frozenset({"figcaption", "caption"})
LIST_ITEMS = frozenset({"li", "dd", "dt"})
# Phrase rules never look inside these: what an article quotes stays as quoted.
KEEPS_PHRASES = frozenset({"blockquote", "pre", "code", "table"})
# Content without text: every other element with nothing left in it (no text, nothing
# but line breaks) is dropped.
CONTENT_WITHOUT_TEXT = frozenset(
    {"img", "picture", "source", "hr", "br", "wbr", "table", "tbody", "thead", "tr", "td", "th"}
)
SPACING = frozenset({"br", "wbr", "hr"})


@dataclass(frozen=True)
class Phrases:
    """One language's furniture phrases, lower case, matched on whole words.

    labels:   a block that is exactly this is furniture ("Advertisement").
    promos:   a block of at most PROMO_MAX characters starting with this is
              furniture ("Subscribe to our newsletter for …"); only phrases no
              article sentence starts with.
    lead_ins: introduce other articles: furniture standing alone, before a
              colon (or dash, arrow) or before links only, and the list of
              links that follows it goes too ("Also read: <a>…</a>").
    more:     a link to the rest of the article, or the words after a text the
              source cut short ("Continue reading"); at the end of a block or of
              the text. One-word phrases must be the link's whole text.
    credits:  (start, words inside) of a syndication line, e.g. WordPress's
              "The post X appeared first on Y."; an empty start matches anywhere.
    """

    labels: tuple[str, ...] = ()
    promos: tuple[str, ...] = ()
    lead_ins: tuple[str, ...] = ()
    more: tuple[str, ...] = ()
    credits: tuple[tuple[str, str], ...] = ()


PHRASES: dict[str, Phrases] = {
    "en": Phrases(
        labels=(
            "advertisement",
            "advertising",
            "sponsored",
            "sponsored content",
            "search",
            "close this search box",
            "skip to content",
            "menu",
            "share",
            "share this",
            "share this article",
            "share this story",
            "share this post",
            "share article",
            "share story",
            "tweet",
            "print",
            "email",
            "comments",
            "leave a comment",
            "subscribe",
            "subscribe now",
            "sign up",
            "newsletter",
            "receive the latest news",
            "get notified about new articles",
            "give a gift subscription",
            "most read",
            "most popular",
        ),
        promos=(
            "subscribe to our newsletter",
            "subscribe to the newsletter",
            "sign up for our newsletter",
            "sign up to our newsletter",
            "sign up for our",
            "sign up to receive",
            "get notified about",
            "get our newsletter",
            "receive the latest news",
            "follow us on",
            "like us on facebook",
            "share on facebook",
            "share on twitter",
            "share on x",
            "share on linkedin",
            "share on whatsapp",
            "share on telegram",
            "share via",
            "click here to subscribe",
            "thanks for reading",
            "support our journalism",
        ),
        lead_ins=(
            "also read",
            "read also",
            "read more",
            "see also",
            "related",
            "related articles",
            "related stories",
            "related posts",
            "related content",
            "related coverage",
            "related reading",
            "more on this",
            "more on this story",
            "more on this topic",
            "recommended",
            "recommended reading",
            "further reading",
            "you may also like",
            "you might also like",
            "don't miss",
            "must read",
            "continue reading",
            "keep reading",
        ),
        more=(
            "continue reading",
            "keep reading",
            "read more",
            "read the full story",
            "read the full article",
            "read full story",
            "read full article",
            "read the rest",
            "read the rest of this entry",
            "read the original article",
            "view full article",
            "full story",
            "more",
        ),
        credits=(
            ("the post", "appeared first on"),
            ("", "where people are continuing the conversation by highlighting"),
        ),
    ),
    "uk": Phrases(
        labels=(
            "реклама",
            "поділитися",
            "пошук",
            "коментарі",
            "підписатися",
            "підпишіться",
            "новини партнерів",
            "найпопулярніше",
        ),
        promos=(
            "підписуйтесь на",
            "підписуйтеся на",
            "підпишіться на",
            "читайте нас у",
            "читайте нас в",
            "стежте за нами",
            "слідкуйте за нами",
            "приєднуйтесь до нас",
            "дивіться нас у",
        ),
        lead_ins=(
            "читайте також",
            "також читайте",
            "читайте більше",
            "дивіться також",
            "див. також",
            "по темі",
            "на цю тему",
            "вас також можуть зацікавити новини",
            "вас також можуть зацікавити",
            "більше новин",
            "читати далі",
            "детальніше",
            "докладніше",
        ),
        more=(
            "читати далі",
            "читати більше",
            "читати повністю",
            "детальніше",
            "докладніше",
            "далі",
        ),
        credits=(
            ("запис", "спершу з'явився на"),
            ("запис", "з'явився спочатку на"),
        ),
    ),
    "de": Phrases(
        labels=(
            "anzeige",
            "werbung",
            "teilen",
            "artikel teilen",
            "suche",
            "drucken",
            "kommentare",
            "abonnieren",
            "jetzt abonnieren",
            "meistgelesen",
        ),
        promos=(
            "newsletter abonnieren",
            "jetzt newsletter abonnieren",
            "abonnieren sie unseren newsletter",
            "melden sie sich für unseren newsletter an",
            "folgen sie uns auf",
            "folgen sie uns bei",
        ),
        lead_ins=(
            "lesen sie auch",
            "lesen sie mehr",
            "mehr zum thema",
            "mehr dazu",
            "auch interessant",
            "das könnte sie auch interessieren",
            "siehe auch",
            "zum thema",
            "weiterlesen",
            "hier weiterlesen",
        ),
        more=(
            "weiterlesen",
            "hier weiterlesen",
            "mehr lesen",
            "artikel lesen",
            "ganzen artikel lesen",
            "zum artikel",
            "mehr",
        ),
        credits=(
            ("der beitrag", "erschien zuerst auf"),
            ("der beitrag", "erschien zuerst bei"),
        ),
    ),
    # Not a newsletter language yet, but a common one in the same newsrooms.
    "ru": Phrases(
        labels=("реклама",),
        promos=("подписывайтесь на", "подпишитесь на"),
        lead_ins=("читайте также", "смотрите также", "по теме"),
        more=("читать далее", "подробнее"),
    ),
}

# Words a date line is made of ("Updated 31 May 2024, 09:15", "Stand: 31.05.2024 09:15 Uhr",
# "31 травня 2024 о 09:15"), with numbers and ordinals.
DATE_WORDS_BY_LANGUAGE = {
    "en": (
        "january february march april may june july august september october november "
        "december jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday "
        "thursday friday saturday sunday mon tue wed thu fri sat sun updated published posted "
        "last modified on at am pm gmt utc bst cet cest eet eest est edt pst pdt ago today "
        "yesterday hour hours minute minutes day days min mins h"
    ),
    "de": (
        "januar jänner februar märz april mai juni juli august september oktober november "
        "dezember jan feb mär apr jun jul aug sep okt nov dez montag dienstag mittwoch "
        "donnerstag freitag samstag sonntag stand aktualisiert veröffentlicht zuletzt am um "
        "uhr vor stunden minuten tagen heute gestern"
    ),
    "uk": (
        "січня лютого березня квітня травня червня липня серпня вересня жовтня листопада "
        "грудня січень лютий березень квітень травень червень липень серпень вересень жовтень "
        "листопад грудень понеділок вівторок середа четвер пʼятниця пятниця субота неділя "
        "оновлено опубліковано сьогодні вчора о об р року год хв тому"
    ),
}
DATE_WORDS = frozenset(w for words in DATE_WORDS_BY_LANGUAGE.values() for w in words.split())
# After a lead-in, these say "what follows is the link": "Also read: …", "Also read — …".
LEAD_IN_MARKS = frozenset(":–—→»›|>")
# The source's own marks of a text it cut short, at the very end.
ELLIPSES = ("[…]", "[...]", "(…)", "(...)", "[more]", "[mehr]")
TRAILING_ROUNDS = 8
ARROWS = ("→", "»", "›", "⟶", ">>")


def _all(kind: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for lang in PHRASES.values() for p in getattr(lang, kind)))


LABELS = frozenset(_all("labels"))
PROMOS = _all("promos")
LEAD_INS = _all("lead_ins")
MORE = _all("more")
CREDITS: tuple[tuple[str, str], ...] = _all("credits")  # type: ignore[assignment]


def _by_first_word(phrases: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Phrases keyed by their first word, longest first, so a block is checked only against
    the few phrases that can match its start."""
    index: dict[str, list[str]] = {}
    for phrase in phrases:
        index.setdefault(phrase.split(" ", 1)[0], []).append(phrase)
    return {k: tuple(sorted(v, key=len, reverse=True)) for k, v in index.items()}


_MORE = frozenset(MORE)
_PROMOS_BY_WORD = _by_first_word(PROMOS)
_LEAD_INS_BY_WORD = _by_first_word(LEAD_INS)

# -- text helpers ------------------------------------------------------------------

WHITESPACE = re.compile(r"\s+")
_FOLD = str.maketrans({"\u00a0": " ", "\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_WORDS = re.compile(r"[a-z0-9]+")
_TOKENS = re.compile(r"\w+")
_DIGIT = re.compile(r"\d")
_NUMBER = re.compile(r"\d{1,4}(?:st|nd|rd|th)?")  # 31, 2024, 31st
_TAG_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")
_LOOKS_LIKE_TAG = re.compile(r"<[/!?a-zA-Z]")
# Characters XML (and so lxml) cannot hold: C0 controls but tab and newlines, and lone
# surrogates (JSON can carry them). Dropped before parsing.
_NOT_XML = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0xFFFE, 0xFFFF])
_NOT_XML.update(dict.fromkeys(range(0xD800, 0xE000)))
_SENTENCE_MARKS = frozenset(".!?…")
# A sentence ends at . ! ? or … (plus closing quotes/brackets) followed by space and
# something that can start a sentence; CJK full stops need no space. A run of marks is
# taken whole (possessive, and never from its middle), so "....…x" is linear, not quadratic.
_SENTENCE_END = re.compile(
    r"(?:(?<![.!?…])[.!?…]++[\"'”’»)\]]*+(?=\s+[\"'“‘«(\[]?[^\W_a-z]|\s*$))|(?:[。！？]+)",
)
_CLOSERS = "\"'”’»)]"


def _fold(text: str) -> str:
    """Lower case, one kind of space and apostrophe, spaces collapsed: for comparing."""
    return WHITESPACE.sub(" ", text.translate(_FOLD)).lower()


def _core(text: str) -> str:
    """`_fold` of the first PHRASE_SCAN characters without leading or trailing punctuation,
    bullets, arrows or emoji: "► Also read:" and "also read" are the same block."""
    s = _fold(text[:PHRASE_SCAN])
    i, j = 0, len(s)
    while i < j and not s[i].isalnum():
        i += 1
    while j > i and not s[j - 1].isalnum():
        j -= 1
    return s[i:j]


def _starts(core: str, phrase: str) -> bool:
    """`core` starts with `phrase` as whole words."""
    return core.startswith(phrase) and (len(core) == len(phrase) or not core[len(phrase)].isalnum())


def _ends_sentence(text: str, *, full_stop: bool = False) -> bool:
    """Ends with . ! ? (or …, unless `full_stop`), closing quotes and brackets aside."""
    end = text.rstrip().rstrip(_CLOSERS)
    marks = ".!?。！？" if full_stop else ".!?…。！？"
    return bool(end) and end[-1] in marks


def _has_sentence_end(text: str) -> bool:
    """A sentence ends inside `text` ("U.S. forces" has none; "It rained. Then" has one)."""
    return _SENTENCE_END.search(text.rstrip(" .!?…" + _CLOSERS)) is not None


def _marks_link(rest: str) -> bool:
    """What follows a lead-in says "here is the link": "Also read: …", "Also read — …"."""
    return not rest or rest[0] in LEAD_IN_MARKS or rest.startswith("- ")


def is_label(text: str) -> bool:
    """Short and not a sentence: a category, a kicker, a button, a heading in a <p>."""
    return len(text) < LEAD_MIN_CHARS and not _ends_sentence(text)


def is_date_line(text: str) -> bool:
    """Made of nothing but a date, a time and words like "Updated": "Stand: 31.05.2024"."""
    if not _DIGIT.search(text, 0, 100):
        return False
    core = _core(text)
    if not core or len(core) > 80:
        return False
    tokens = _TOKENS.findall(core)
    if not any(t.isdigit() for t in tokens):
        return False
    return all(_NUMBER.fullmatch(token) or token in DATE_WORDS for token in tokens)


def furniture_rule(text: str, non_link_text: Callable[[], str] | None = None) -> str | None:
    """Which phrase rule makes a block with this text furniture, or None to keep it.

    `non_link_text` gives the block's text outside its links, asked for only
    when a lead-in is followed by more words ("Also read <a>…</a>").
    """
    if len(text) > PHRASE_SCAN:
        return None
    core = _core(text)
    if not core:  # no words at all: only cut marks ("[…]", "… […]") are furniture, not "***"
        rest, marks = text, False
        for _ in range(TRAILING_ROUNDS):
            rest, ellipsis = _strip_ellipsis(rest)
            marks |= ellipsis
        return "cut mark" if marks and not rest else None
    if core in LABELS:
        return "label"
    if core in _MORE:
        return "link to the rest"
    first = core.split(" ", 1)[0]
    if len(core) <= PROMO_MAX and any(_starts(core, p) for p in _PROMOS_BY_WORD.get(first, ())):
        return "promotion"
    for phrase in _LEAD_INS_BY_WORD.get(first, ()):
        if not _starts(core, phrase):
            continue
        if _marks_link(core[len(phrase) :].lstrip()):
            return "lead-in"
        if non_link_text is not None and _core(non_link_text()) == phrase:
            return "lead-in"
    if 20 <= len(core) <= CREDIT_MAX and any(
        inside in core and (not start or _starts(core, start)) for start, inside in CREDITS
    ):
        return "credit"
    return None


def _is_more_link(text: str) -> bool:
    core = _core(text)
    return any(
        core == phrase or (" " in phrase and _starts(core, phrase) and len(core) <= PHRASE_SCAN)
        for phrase in MORE
    )


def _strip_ellipsis(text: str) -> tuple[str, bool]:
    """`text` without the source's own mark of a cut at its end ("…", "...", "[…]")."""
    text = text.rstrip()
    bare = text.rstrip("…")  # "……" is one mark; a full stop before it stays: "end.…"
    if len(bare) - len(bare.rstrip(".")) >= 3:  # "...", "....": one mark too
        bare = bare.rstrip(".")
    if len(bare) < len(text):
        return bare.rstrip(), True
    return _strip_end(text, ELLIPSES)


def _strip_end(text: str, marks: Iterable[str]) -> tuple[str, bool]:
    for mark in marks:
        if text.endswith(mark):
            return text[: -len(mark)].rstrip(), True
    return text, False


def _lead_in_tail(text: str) -> int | None:
    """Where a trailing "Also read: some title" starts in `text`, if it ends with one:
    a lead-in after a sentence (or at the start), a mark, and no sentence after it."""
    tail_start = max(0, len(text) - PHRASE_SCAN)
    tail = text[tail_start:]
    low = tail.lower()
    if len(low) != len(tail):  # a character whose lower case is longer: positions differ
        return None
    best: int | None = None
    for phrase in LEAD_INS:
        at = low.rfind(phrase)
        while at >= 0:
            before = low[:at].rstrip()
            after = low[at + len(phrase) :]
            starts_sentence = not before or before[-1] in _SENTENCE_MARKS or before[-1] in _CLOSERS
            whole_word = not after[:1].isalnum()
            rest = tail[len(tail) - len(after) :].lstrip()
            if starts_sentence and whole_word and _marks_link(rest) and not _has_sentence_end(rest):
                best = at if best is None else min(best, at)
                break
            at = low.rfind(phrase, 0, at)
    return None if best is None else tail_start + best


def strip_trailing(text: str) -> tuple[str, bool]:
    """`text` without what sources put after their own text, and whether that said the text
    was cut short: "[…]", "…", "Continue reading →", "Read more", "Also read: …".

    At most TRAILING_ROUNDS layers come off ("… [more] Continue reading →" is three):
    a text that ends in more than that is built to keep a loop busy.
    """
    cut_short = False
    for _ in range(TRAILING_ROUNDS):
        before = text
        text, _ = _strip_end(text.rstrip(" ,;:-–—|"), ARROWS)
        text, ellipsis = _strip_ellipsis(text)
        cut_short |= ellipsis
        low = text[-60:].lower()
        for phrase in MORE:
            if low.endswith(phrase) and len(low) == len(text[-60:]):
                preceding = text[: len(text) - len(phrase)]
                ahead = preceding.rstrip()
                # "… it rained. Read more", "… [&hellip;] Weiterlesen": never "Thursday.Mehr"
                after_sentence = preceding[-1:].isspace() and ahead[-1:] in (
                    *_SENTENCE_MARKS,
                    "]",
                    ")",
                )
                if not ahead or after_sentence or ahead[-1] in "…]":
                    text, cut_short = ahead, True
                    break
        at = _lead_in_tail(text)
        if at is not None:
            text = text[:at].rstrip()
        if text == before:
            break
    return text.rstrip(" ,;:-–—|"), cut_short


def cut_summary(text: str, length: int, *, cut_short: bool = False) -> str:
    """`text` cut at the sentence end nearest `length`, never inside a word.

    Goes up to a fifth past `length` to finish a sentence. When no sentence
    ends between half of `length` and that limit, cuts at the last space
    before `length` and adds an ellipsis: ours, the one mark of a cut a
    summary may end in. `cut_short` says the source already cut the text:
    then it too ends at a sentence or with our ellipsis, never mid-sentence.
    Text is plain, so no cut can land inside a tag.
    """
    text = WHITESPACE.sub(" ", text).strip()
    if cut_short and _ends_sentence(text):
        cut_short = False  # it was cut after a whole sentence: nothing is missing from it
    if length <= 0 or not text or (len(text) <= length and not cut_short):
        return text
    hard = length + length // 5
    best = None
    # Only the first `hard` characters can hold the cut; a few more say what follows.
    for match in _SENTENCE_END.finditer(text[: hard + 8]):
        end = match.end()
        if end > hard:
            break
        # A sentence that ends in "…" or "..." is not one we can end on: the summary would
        # end in an ellipsis that is not ours. "Done.…" ends at the full stop.
        mark, ellipsis = _strip_ellipsis(match.group().rstrip(_CLOSERS))
        if ellipsis:
            if not mark:
                continue
            end = match.start() + len(mark)
        if end >= length // 2:
            best = end
    if best is not None:
        return text[:best].strip()
    cut = text
    if len(text) > length:
        cut = text[: length + 1]
        space = cut.rfind(" ")
        # One enormous word has no boundary to respect: then cut the characters.
        cut = cut[:space] if space > 0 else cut[:length]
    # Where the cut fell, the source's own marks go ("… [&hellip;] Read more"); after a
    # full stop it needs no ellipsis of ours.
    cut = strip_trailing(cut)[0]
    return cut if _ends_sentence(cut, full_stop=True) else cut + "…"


# -- the tree ------------------------------------------------------------------------


def parse(value: str) -> Any | None:
    """The <body> of `value` as libxml2 reads it, or None if there is nothing in it.

    Text without any tag is taken a paragraph a line, so plain-text summaries
    and bodies get the same block rules as HTML ones.
    """
    value = value[:MAX_CONTENT].translate(_NOT_XML)
    if not value.strip():
        return None
    if not _LOOKS_LIKE_TAG.search(value) and _LOOKS_LIKE_TAG.match(html.unescape(value).lstrip()):
        value = html.unescape(value)  # "&lt;p&gt;Lead…": escaped once too often, as feeds do
    if not _LOOKS_LIKE_TAG.search(value):
        # Entities stay for libxml2 to decode, as in HTML; a lone "<" or ">" is text.
        lines = (
            line.strip().replace("<", "&lt;").replace(">", "&gt;") for line in value.split("\n")
        )
        value = "".join(f"<p>{line}</p>" for line in lines if line)
    # A parser per call: lxml's parsers must not be shared between threads.
    parser = etree.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
    try:
        doc = etree.fromstring(value, parser)
    except ValueError:  # an encoding declaration in a str
        try:
            doc = etree.fromstring(re.sub(r"^\s*<\?xml[^>]{0,200}\?>", "", value), parser)
        except (ValueError, etree.LxmlError):
            return None
    except etree.LxmlError:
        return None
    return None if doc is None else doc.find("body")


def inner_html(root: Any) -> str:
    """The element's content as HTML, without the element itself."""
    head = html.escape(root.text, quote=False) if root.text else ""
    children = "".join(etree.tostring(child, encoding="unicode", method="html") for child in root)
    return (head + children).strip()


def _text(el: Any) -> str:
    return "".join(el.itertext())


def _unwrap(el: Any) -> None:
    """Put what `el` holds (text, children, tail) in its place, without `el`."""
    parent, previous = el.getparent(), el.getprevious()
    index = parent.index(el)
    text, tail, children = el.text or "", el.tail or "", list(el)
    parent.remove(el)
    for offset, child in enumerate(children):
        parent.insert(index + offset, child)
    if text:
        if previous is not None:
            previous.tail = (previous.tail or "") + text
        else:
            parent.text = (parent.text or "") + text
    if tail:
        last = children[-1] if children else previous
        if last is not None:
            last.tail = (last.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail


def _text_within(el: Any, limit: int) -> str | None:
    """The element's text, or None once it is longer than `limit`: stops reading there."""
    parts: list[str] = []
    size = 0
    for piece in el.itertext():
        parts.append(piece)
        size += len(piece) + 1
        if size > limit:
            return None
    return " ".join(parts)


def _non_link_text(el: Any) -> str:
    return " ".join(el.xpath(".//text()[not(ancestor::a)]"))


def _describe(el: Any) -> str:
    tag = el.tag if isinstance(el.tag, str) else "comment"
    if tag == "img":
        return f"image {(el.get('src') or '')[:200]}"
    if tag in FURNITURE_TAGS:
        return f"<{tag}>"
    text = " ".join((_text_within(el, 400) or _text(el)[:400]).split())
    return text[:160] or f"<{tag}>"


@dataclass
class _Segment:
    """A run of text between block boundaries, in the innermost block holding it."""

    text: str
    el: Any
    tag: str  # the block's tag; "" for text lying directly in the root
    block: list[Any]  # [element, holds another block], shared with the walk

    @property
    def leaf(self) -> bool:
        """The block holds no other block: this is all of its text."""
        return bool(self.tag) and not self.block[1]


def segments(root: Any, *, plain: bool = True) -> list[_Segment]:
    """The text of the tree as it reads, split at block boundaries, in document order;
    with `plain`, tags escaped once too often in it are read as markup (`_plain`)."""
    found: list[_Segment] = []
    stack: list[list[Any]] = [[root, False]]
    buffer: list[str] = []

    def flush() -> None:
        if not buffer:
            return
        text = WHITESPACE.sub(" ", "".join(buffer)).strip()
        buffer.clear()
        if plain and _LOOKS_LIKE_TAG.search(text):
            text = _plain(text)
        if text:
            el = stack[-1][0]
            found.append(_Segment(text, el, "" if el is root else str(el.tag), stack[-1]))

    for event, el in etree.iterwalk(root, events=("start", "end")):
        if el is root:
            if event == "start" and root.text:
                buffer.append(root.text)
            continue
        is_block = el.tag in BLOCK_TAGS
        if event == "start":
            if is_block:
                flush()
                stack[-1][1] = True
                stack.append([el, False])
            elif el.tag in SPACING:
                buffer.append(" ")
            if el.text:
                buffer.append(el.text)
        else:
            if is_block:
                flush()
                stack.pop()
            if el.tail:
                buffer.append(el.tail)
    flush()
    return found


class _Cleaning:
    """One run of the rules over one tree; `removed` collects what went, for operators."""

    def __init__(self, root: Any, title: str | None, removed: list[str] | None) -> None:
        self.root = root
        self.title = _core(title or "")
        self.removed = removed
        self.cut_short = False
        self.changes = 0  # elements removed, unwrapped or made, texts cut: rounds stop at none

    def drop(self, el: Any, why: str) -> None:
        """Remove `el` and what is inside it, keeping the text that follows it."""
        parent = el.getparent()
        if parent is None:
            return
        self.changes += 1
        if self.removed is not None:
            self.removed.append(f"{why}: {_describe(el)}")
        tail = el.tail or ""
        prev = el.getprevious()
        if tail:
            before = (prev.tail if prev is not None else parent.text) or ""
            # A removed block or word must not glue its neighbours together.
            glued = before and not before[-1].isspace() and not tail[0].isspace()
            if glued and (el.tag in TEXT_BREAKS or _text(el).strip()):
                tail = " " + tail
            if prev is not None:
                prev.tail = before + tail
            else:
                parent.text = before + tail
        parent.remove(el)

    def run(self) -> None:
        self.drop_tags()
        for _ in range(ROUNDS):
            before = self.changes
            self.wrap_loose_text()
            self.drop_marked()
            self.drop_pixels_and_empty_links()
            self.drop_empty()
            self.drop_runs()
            self.drop_phrases()
            self.drop_trailing_links()
            self.drop_empty()
            # What one rule took away can bring another into play (a box left with only
            # a date line in it, text left loose beside no block, a box marked by its
            # class now under its share): the rules look again until they find nothing,
            # so cleaning what the cleaner made changes nothing.
            if self.changes == before:
                break

    def wrap_loose_text(self) -> None:
        mixed = [
            el
            for el in self.root.iter()
            if len(el)
            and el.tag not in NO_PARAGRAPHS_INSIDE
            and any(_holds_block(child) for child in el)
        ]
        self.changes += sum(_wrap_loose_text(el) for el in dict.fromkeys([self.root, *mixed]))

    # 1
    def drop_tags(self) -> None:
        stack = list(reversed(self.root))
        while stack:
            el = stack.pop()
            if not isinstance(el.tag, str):  # comments, processing instructions
                self.drop(el, "comment")
                continue
            if el.tag in FURNITURE_TAGS and not (
                el.tag in ("header", "footer")
                and any(a.tag in KEEPS_OWN_FURNITURE for a in el.iterancestors())
            ):
                self.drop(el, "element")
                continue
            stack.extend(reversed(el))
            if not _TAG_NAME.fullmatch(el.tag):
                _unwrap(el)  # not a real element ("a<b"): keep what it holds

    # 2
    def drop_marked(self) -> int:
        total = max(len(_text(self.root)), 1)
        stack = list(reversed(self.root))
        dropped = 0
        while stack:
            el = stack.pop()
            if _marked(el) and len(_text(el)) < FURNITURE_MAX_SHARE * total:
                self.drop(el, "furniture by class")
                dropped += 1
                continue
            stack.extend(reversed(el))
        return dropped

    # 3
    def drop_pixels_and_empty_links(self) -> None:
        for img in list(self.root.iter("img")):
            if _is_pixel(img):
                self.drop(img, "tracking image")
        for link in list(self.root.iter("a")):
            if not _text(link).strip() and next(link.iter("img"), None) is None:
                self.drop(link, "empty link")

    # 5 (decided before 4, which removes the furniture that marks where the article ends)
    def drop_runs(self) -> None:
        parts = segments(self.root)
        leads = [i for i, s in enumerate(parts) if self.is_lead(s)]
        if not leads:
            return
        lead, last = leads[0], leads[-1]
        for part in parts[:lead]:
            if (
                part.leaf
                and not _has_image(part.el)
                and (part.tag == "h1" or _core(part.text) == self.title or is_date_line(part.text))
            ):
                self.drop(part.el, "before the lead")
        after = parts[last + 1 :]
        begun = next((i for i, s in enumerate(after) if furniture_rule(s.text)), None)
        if begun is None:
            return
        for part in after[begun + 1 :]:
            if part.leaf and not _has_image(part.el) and is_label(part.text):
                self.drop(part.el, "label among furniture")

    def is_lead(self, part: _Segment) -> bool:
        """Could this be the first paragraph of the article's own text?"""
        if part.tag in HEADINGS or part.tag in CAPTIONS:
            return False
        if is_label(part.text) or is_date_line(part.text) or furniture_rule(part.text):
            return False
        return not (self.title and _core(part.text) == self.title)

    # 4
    def drop_phrases(self) -> None:
        """Innermost blocks first, so a box is judged by what is left in it once the
        furniture inside it is gone (<ul>Advertisement<p>Advertisement</p></ul>)."""
        quoted = {el for keeper in self.root.iter(*KEEPS_PHRASES) for el in keeper.iter()}
        for el in reversed(list(self.root.iter(*BLOCK_TAGS))):
            if el in quoted or el.getparent() is None:
                continue
            text = _text_within(el, PHRASE_SCAN)
            rule = None if text is None else furniture_rule(text, partial(_non_link_text, el))
            if rule is not None:
                if rule == "lead-in":
                    self.drop_link_lists_after(el)
                self.drop(el, rule)

    def drop_link_lists_after(self, el: Any) -> None:
        """The links an "Also read:" introduces: the blocks after it made only of links."""
        following: list[Any] = []
        node, tail = el.getnext(), el.tail
        while node is not None and len(following) < LINK_LISTS_MAX:
            if (tail or "").strip() or not _is_link_list(node):
                break
            following.append(node)
            node, tail = node.getnext(), node.tail
        for node in following:
            self.drop(node, "links after a lead-in")

    # 6
    def drop_trailing_links(self) -> None:
        for el in [self.root, *self.root.iter(*BLOCK_TAGS)]:
            if el.getparent() is None and el is not self.root:
                continue
            if len(el) == 0 or el[-1].tag != "a" or (el[-1].tail or "").strip():
                continue
            link = el[-1]
            text = _text_within(link, PHRASE_SCAN)
            if text is None:
                continue
            prev = link.getprevious()
            if _is_more_link(text):
                self.cut_short = True
                self.drop(link, "link to the rest")
                owner, attr = (prev, "tail") if prev is not None else (el, "text")
                before = getattr(owner, attr) or ""
                setattr(owner, attr, _strip_ellipsis(before)[0] if before.strip() else before)
                continue
            if prev is not None and (prev.tail or "").strip():
                owner, attr = prev, "tail"
            elif prev is not None and prev.tag in ("strong", "b", "em", "i", "span"):
                owner, attr = prev, "text"
            elif prev is None:
                owner, attr = el, "text"
            else:
                continue
            before = getattr(owner, attr) or ""
            at = _lead_in_tail(before)
            if at is None:
                continue
            self.drop(link, "inline lead-in")
            setattr(owner, attr, before[:at].rstrip() + (" " if before[:at].strip() else ""))
            if attr == "text" and owner is not el and not _text(owner).strip():
                self.drop(owner, "inline lead-in")

    # 7
    def drop_empty(self) -> None:
        for el in reversed(list(self.root.iter())):
            if el is self.root or el.tag in CONTENT_WITHOUT_TEXT or el.getparent() is None:
                continue
            if (el.text or "").strip():
                continue
            if all(child.tag in SPACING and not (child.tail or "").strip() for child in el):
                self.drop(el, "empty")


def _holds_block(el: Any) -> bool:
    """A block, or an inline element with a block inside (<span><p>…</p></span>): what a
    paragraph cannot hold (libxml2 would end the paragraph there)."""
    if el.tag in BREAKS_PARAGRAPHS:
        return True
    return len(el) > 0 and next(el.iter(*BREAKS_PARAGRAPHS), None) is not None


def _wrap_loose_text(parent: Any) -> int:
    """Text and inline elements lying loose beside blocks (in the root, or in a <div>
    that also holds paragraphs) become paragraphs of their own, so the block rules see
    them as they see a plain-text line ("Advertisement", "Also read: <a>…</a>", a lone
    "Continue reading" link after the last paragraph), and as they will once the
    sanitiser has unwrapped the <div>. A run with no text (an image alone) stays.
    Returns how many paragraphs it made."""
    items: list[Any] = []  # blocks, and runs: [text, inline element, inline element, …]
    run: list[Any] | None = None

    def loose() -> list[Any]:
        nonlocal run
        if run is None:
            run = [""]
            items.append(run)
        return run

    def add_text(text: str) -> None:
        current = loose()
        if len(current) > 1:
            current[-1].tail = (current[-1].tail or "") + text
        else:
            current[0] += text

    if parent.text and parent.text.strip():
        add_text(parent.text)
    parent.text = None
    for child in list(parent):
        tail, child.tail = child.tail, None
        parent.remove(child)
        if _holds_block(child):
            run = None
            items.append(child)
        else:
            loose().append(child)
        if tail and (run is not None or tail.strip()):
            add_text(tail)
    made = 0
    for item in items:
        if not isinstance(item, list):
            parent.append(item)
            continue
        text, nodes = item[0], item[1:]
        if text.strip() or any(_text(n).strip() or (n.tail or "").strip() for n in nodes):
            paragraph = etree.SubElement(parent, "p")
            paragraph.text = text or None
            paragraph.extend(nodes)
            made += 1
            continue
        if text:  # whitespace before an image standing alone
            if len(parent):
                parent[-1].tail = (parent[-1].tail or "") + text
            else:
                parent.text = text
        parent.extend(nodes)
    return made


def _marked(el: Any) -> bool:
    """Class, id, role or style say this element is furniture or hidden."""
    if not el.attrib:
        return False
    words = f"{el.get('class', '')[:500]} {el.get('id', '')[:200]}".lower()
    if FURNITURE_WORDS.intersection(_WORDS.findall(words)):
        return True
    if el.get("role") in FURNITURE_ROLES or el.get("aria-hidden") == "true":
        return True
    style = el.get("style", "")[:500].replace(" ", "").lower()
    return "display:none" in style or "visibility:hidden" in style


def _pixels(value: str | None) -> int | None:
    digits = (value or "").strip()[:10].removesuffix("px").strip()
    return int(digits) if digits.isdigit() else None


def _is_pixel(img: Any) -> bool:
    width, height = _pixels(img.get("width")), _pixels(img.get("height"))
    if (width is not None and width <= 1) or (height is not None and height <= 1):
        return True
    style = img.get("style", "")[:500].replace(" ", "").lower()
    if any(f"{side}:{size}" in style for side in ("width", "height") for size in ("0;", "1px")):
        return True
    try:
        parts = urlsplit((img.get("src") or "").strip()[:2000])
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    return any(
        (host == name or host.endswith("." + name)) and parts.path.startswith(path)
        for name, path in TRACKERS
    )


def _has_image(el: Any) -> bool:
    return next(el.iter("img"), None) is not None


def _is_link_list(el: Any) -> bool:
    """A block of nothing but links (and bullets or punctuation between them)."""
    if el.tag not in ("ul", "ol", "p", "div", "li") or next(el.iter("a"), None) is None:
        return False
    text = _text_within(el, LINK_LIST_MAX)
    return text is not None and not _core(_non_link_text(el))


# -- cleaning --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cleaned:
    """One field after the cleaner: HTML (still to be sanitised) and the lead as text."""

    html: str = ""
    lead: str = ""  # plain text from the lead on, without the source's trailing marks
    has_lead: bool = False  # a paragraph of the article's own text, not only labels
    cut_short: bool = False  # the source cut its own text ("[…]", "Continue reading")
    image: str | None = None  # the first image kept, as written in the source
    removed: list[str] = field(default_factory=list)


def _plain(text: str) -> str:
    """Text with tags in it that were escaped once too often ("&lt;p&gt;Lead") read as
    markup: the tags are never shown as text. What they hold stays, even a "<script>"'s
    (only as text): "Why <script> tags are dangerous" keeps its last four words."""
    for _ in range(3):  # what a <script> holds is raw text: it may hold more tags
        if not _LOOKS_LIKE_TAG.search(text):
            return text
        root = parse(text)
        if root is None:
            return ""
        text = WHITESPACE.sub(" ", " ".join(root.itertext())).strip()
    root = parse(text)  # tags in tags in tags: built to be shown, so their text goes too
    if root is None:
        return ""
    _Cleaning(root, None, None).drop_tags()
    text = WHITESPACE.sub(" ", " ".join(root.itertext())).strip()
    return text.replace("<", "") if _LOOKS_LIKE_TAG.search(text) else text  # <xmp>, say


def clean(value: str | None, *, title: str | None = None) -> Cleaned:
    """The field without furniture, its lead and what was removed; never raises."""
    if not value:
        return Cleaned()
    root = parse(value)
    if root is None:
        return Cleaned()
    removed: list[str] = []
    run = _Cleaning(root, title, removed)
    run.run()
    text, has_lead = _lead_text(root, run)
    lead, cut_short = strip_trailing(text)
    image = next((img.get("src") for img in root.iter("img") if img.get("src")), None)
    return Cleaned(
        html=inner_html(root),
        lead=lead,
        has_lead=has_lead,
        cut_short=cut_short or run.cut_short,
        image=image,
        removed=removed,
    )


def _lead_text(root: Any, run: _Cleaning) -> tuple[str, bool]:
    """The text from the lead on, without headings, captions, labels and date lines, and
    True; all the text and False when no paragraph looks like a lead (a one-liner)."""
    parts = segments(root)
    lead = next((i for i, s in enumerate(parts) if run.is_lead(s)), None)
    if lead is None:  # what a quote or a table kept from the rules is no summary either
        return " ".join(s.text for s in parts if not furniture_rule(s.text)), False
    kept = [parts[lead].text]
    for part in parts[lead + 1 :]:
        if part.tag in HEADINGS or part.tag in CAPTIONS or is_date_line(part.text):
            continue
        if is_label(part.text) and part.tag not in LIST_ITEMS:
            continue
        kept.append(part.text)
    return " ".join(kept), True


def _same_start(short: str, long: str) -> bool:
    """The excerpt `short` is how `long` begins (a feed's automatic excerpt of its body)."""
    a, b = _fold(short), _fold(long)
    n = min(len(a), 40)
    return n > 0 and a[:n] == b[:n]


def _prefer_body(described: Cleaned, body: Cleaned) -> bool:
    if not body.lead:
        return False
    if not described.lead:
        return True
    if not described.has_lead:  # only a label, a date or the headline again
        return body.has_lead
    # An excerpt the source cut short ("… [&hellip;]") of the very body we have.
    return (
        described.cut_short
        and len(body.lead) > len(described.lead)
        and _same_start(described.lead, body.lead)
    )


def summarise(described: Cleaned, body: Cleaned, length: int) -> str:
    """The summary a digest shows: the lead of the source's own summary, or of the body
    when that summary has none or is an excerpt the source cut short of the body."""
    chosen = body if _prefer_body(described, body) else described
    summary = cut_summary(chosen.lead, length, cut_short=chosen.cut_short)
    # The cut may land just after an inline "Also read: …" that was not at the end.
    at = _lead_in_tail(summary.removesuffix("…"))
    summary = summary[:at].rstrip() if at else summary
    # What is left of a source with no paragraph of its own may be furniture as a whole
    # ("… Advertisement"), or no words at all: no summary then.
    return "" if not _core(summary) or furniture_rule(summary) else summary
