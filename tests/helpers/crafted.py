"""Crafted article text: what someone who wants our workers busy would send.

Each value is as large as the store takes (`MAX_CONTENT` characters) and
aims at one weakness: recursion on deep nesting, a quadratic walk over many
elements or siblings, regular-expression backtracking on runs of marks, a
loop that strips one trailing phrase at a time. The unit tests run every
one through `incoming.normalise` under a timeout; `benchmarks.clean`
prints how long each takes.
"""

from __future__ import annotations

from mailer.content.cleaner import MAX_CONTENT


def _fill(unit: str, size: int) -> str:
    return unit * max(1, size // len(unit))


def hostile_inputs(size: int = MAX_CONTENT) -> dict[str, str]:
    return {
        "deep <div>": _fill("<div>", size),
        "deep <ul><li>": _fill("<ul><li>", size),
        "deep <blockquote>": _fill("<blockquote>", size),
        "deep furniture class": _fill('<div class="share">x', size),
        "deep <b><i> misnesting": _fill("<b><i>", size // 2) + _fill("</b></i>", size // 2),
        "many paragraphs": _fill("<p>word.</p>", size),
        "many 'Also read' blocks": _fill("<p>Also read: <a href='/x'>x</a></p>", size),
        "many empty spans in a chain": _fill("<div>" + "<span></span>" * 2000, size),
        "many pixels": _fill('<img src="https://t.example/p.gif" width="1">', size),
        "many empty links": _fill('<a href="https://t.example/"></a>', size),
        "many odd tag names": _fill("<a<b>x", size),
        "run of dots": "a" + "." * size + "b",
        "run of ellipses": "a" + "…" * size + "b",
        "run of bracketed ellipses": "a " + _fill("[…]", size),
        "lead-in at every sentence end": _fill("Also read: x. ", size),
        "one enormous word": "x" * size,
        "one enormous attribute": '<p class="' + _fill("a ", size) + '">x</p>',
        "a lone '<' everywhere": "<" * size,
        "script in every block": _fill("<p>x<script>alert(1)</script></p>", size),
        "control characters": _fill("<p>a\x00b\x1b]0;t\x07c\x0b\x7f\x85\ufffe</p>", size),
    }
