"""How every listing prints: for a person, or with `--json` for a program.

A person gets a table when it fits the console's width (a pipe counts as 80
columns), else one record per block, so no value is ever squashed into
`wi…`. A program gets one JSON document on stdout whose keys are the
operator API's field names for the same thing (the same pydantic models):
an array for a listing, an object for one record. Cell text is never read as
rich markup: a feed title may contain `[/]`.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from rich import box
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from mailer.cli.base import console

T = TypeVar("T")

json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document with the operator API's field names.",
)


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], str]


def when(value: datetime | None, empty: str = "") -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else empty


def print_json(data: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """One document on stdout: a model as an object, a sequence of models as an array."""
    if isinstance(data, BaseModel):
        payload: Any = data.model_dump(mode="json")
    elif isinstance(data, dict):
        payload = data
    else:
        payload = [item.model_dump(mode="json") for item in data]
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def show(
    records: Sequence[T],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    empty: str = "",
) -> None:
    """A table if its widest row fits the console, else one block per record."""
    if not records:
        if empty:
            console.print(empty, highlight=False, soft_wrap=True)
        return
    rows = [[column.value(record) for column in columns] for record in records]
    # No outer edge and no vertical rules: narrower, and grep-friendly in a pipe.
    table = Table(
        *(c.header for c in columns),
        title=title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        title_justify="left",
    )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    # Measured without the console's limit, which a table's measure would clamp to.
    widest = Measurement.get(console, console.options.update_width(10**6), table).maximum
    if widest <= console.width:
        console.print(table)
        return
    if title:
        console.print(Text(title, style="bold"))
    pad = max(len(c.header) for c in columns) + 2
    for i, row in enumerate(rows):
        if i:
            console.print()
        for column, cell in zip(columns, row, strict=True):
            if not cell:
                continue
            # Wrapped at spaces under its own column; a word longer than the line (a URL)
            # stays whole on a line of its own, so it can still be copied.
            lines = _wrap(cell, max(console.width - pad, 20))
            console.print(
                Text.assemble((column.header.ljust(pad), "bold"), lines[0]), soft_wrap=True
            )
            for more in lines[1:]:
                console.print(Text(" " * pad + more), soft_wrap=True)


ITEM = " · "  # how a value lists several things ("3 sent · 1 deferred"): kept whole


def _wrap(value: str, width: int) -> list[str]:
    """Lines of at most `width` broken at spaces, never inside a word (a URL stays whole
    on a line of its own) nor inside one item of a `·` list; a value's own lines stay."""
    glue = "\0"
    out: list[str] = []
    for line in value.splitlines():
        units = [item.replace(" ", glue) for item in line.split(ITEM)]
        words = (glue + "·" + " ").join(units)
        wrapped = textwrap.wrap(words, width, break_long_words=False, break_on_hyphens=False)
        out += [part.replace(glue, " ") for part in wrapped]
    return out or [value]


def tally(counts: dict[str, int], order: Sequence[str], none: str = "") -> str:
    """Only the counts there are, one a line, in `order`: "980 sent" over "12 failed"."""
    return "\n".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or none
