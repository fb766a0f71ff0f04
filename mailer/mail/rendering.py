"""Jinja2 for email: HTML with CSS inlined once, plain text from the same data.

Each email kind is a folder of templates/email/ holding subject.txt,
body.html and body.txt; body.html extends the shared layout. Premailer runs
once per rendered body (never per reader) and never touches the network:
the stylesheet is read from disk and handed over as text.
"""

from __future__ import annotations

import logging
import re
import textwrap
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cssutils
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from premailer import Premailer

cssutils.log.setLevel(logging.CRITICAL)


# C0 and C1 control characters (NUL among them) as blanks: a title from outside that
# carries one would otherwise reach the Subject header, where it is refused.
_CONTROLS = {c: " " for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def one_line(text: str) -> str:
    """A header's text: one line, runs of white space and control characters as one blank."""
    return " ".join(text.translate(_CONTROLS).split())


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def wrap_text(text: str, width: int = 72) -> str:
    """Wrap prose paragraphs at `width`, leaving URLs and short lines whole."""
    out = []
    for line in text.splitlines():
        if len(line) <= width or "://" in line:
            out.append(line)
        else:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(
                textwrap.wrap(
                    line,
                    width,
                    subsequent_indent=indent,
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
    return "\n".join(out)


GLUE = "\x00"


class Footnotes:
    """Links in a text part as numbered footnotes, so the prose wraps and reads on its own.

    A long URL in the middle of a sentence breaks the sentence and can't be
    wrapped; `label [1]` can, and the URLs follow in a list at the end, where
    a long line hurts no one. Text templates call `footnote(label, url)`; for
    HTML (an article summary) `footnote_html(html)` turns it into text with
    its links footnoted in the same numbering. The same URL keeps its number.
    """

    def __init__(self) -> None:
        self.urls: list[str] = []

    def ref(self, label: str, url: str) -> str:
        if not url:
            return label
        if url not in self.urls:
            self.urls.append(url)
        # GLUE keeps a reference on the line of the word it belongs to while wrapping.
        return f"{label}{GLUE}[{self.urls.index(url) + 1}]".strip()

    def html_to_text(self, html: str) -> str:
        converter = _HTMLText(self)
        converter.feed(html)
        converter.close()
        return converter.text()

    def render(self) -> str:
        """The list to append: empty when no link was footnoted."""
        if not self.urls:
            return ""
        return "\n" + "".join(f"[{n}] {url}\n" for n, url in enumerate(self.urls, 1))


class _HTMLText(HTMLParser):
    """HTML to plain text: blocks become paragraphs, links become footnote references."""

    BLOCKS = frozenset(
        {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "blockquote", "table", "tr"}
    )
    SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self, notes: Footnotes) -> None:
        super().__init__(convert_charrefs=True)
        self.notes = notes
        self.parts: list[str] = []
        self.href: str | None = None
        self.label: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self.href = href if href.startswith(("http://", "https://", "mailto:")) else ""
            self.label = []
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "a" and self.href is not None:
            label = " ".join("".join(self.label).split())
            self.parts.append(self.notes.ref(label, self.href) if self.href else label)
            self.href = None
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        (self.label if self.href is not None else self.parts).append(data)

    def text(self) -> str:
        raw = "".join(self.parts)
        lines = [" ".join(line.split()) for line in raw.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class EmailRenderer:
    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = templates_dir
        self.html_env = Environment(
            loader=FileSystemLoader(str(templates_dir)),
            autoescape=select_autoescape(["html"], default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.text_env = Environment(
            loader=FileSystemLoader(str(templates_dir)),
            autoescape=False,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        css_path = templates_dir / "style.css"
        css = css_path.read_text() if css_path.exists() else ""
        self._premailer = Premailer(
            css_text=css,
            allow_network=False,
            allow_loading_external_files=False,
            keep_style_tags=True,
            disable_validation=True,
            cssutils_logging_level=logging.CRITICAL,
            disable_basic_attributes=["width", "height"],
            # The dark-mode and narrow-screen rules in base.html must beat the
            # inlined light styles; premailer strips !important unless told not to.
            strip_important=False,
        )

    def inline(self, html: str) -> str:
        return str(self._premailer.transform(html, pretty_print=False))

    def render(self, kind: str, context: dict[str, Any]) -> RenderedEmail:
        subject = self.text_env.get_template(f"{kind}/subject.txt").render(context)
        subject = one_line(subject)
        html = self.html_env.get_template(f"{kind}/body.html").render(context, subject=subject)
        notes = Footnotes()
        text = self.text_env.get_template(f"{kind}/body.txt").render(
            context, subject=subject, footnote=notes.ref, footnote_html=notes.html_to_text
        )
        text = wrap_text(text).replace(GLUE, " ")
        if notes.urls:
            text = text.rstrip("\n") + "\n" + notes.render()
        return RenderedEmail(subject=subject, html=self.inline(html), text=text)
