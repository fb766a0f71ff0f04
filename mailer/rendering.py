"""Jinja2 for email: HTML with CSS inlined once, plain text from the same data.

Each email kind is a folder of templates/email/ holding subject.txt,
body.html and body.txt; body.html extends the shared layout. Premailer runs
once per rendered body (never per reader) and never touches the network:
the stylesheet is read from disk and handed over as text.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cssutils
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from premailer import Premailer

cssutils.log.setLevel(logging.CRITICAL)


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
        )

    def inline(self, html: str) -> str:
        return str(self._premailer.transform(html, pretty_print=False))

    def render(self, kind: str, context: dict[str, Any]) -> RenderedEmail:
        subject = self.text_env.get_template(f"{kind}/subject.txt").render(context)
        subject = " ".join(subject.split())
        html = self.html_env.get_template(f"{kind}/body.html").render(context, subject=subject)
        text = self.text_env.get_template(f"{kind}/body.txt").render(context, subject=subject)
        return RenderedEmail(subject=subject, html=self.inline(html), text=wrap_text(text))
