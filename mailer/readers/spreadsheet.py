"""CSV cells a spreadsheet will not run: the one rule for every CSV we write or read back.

A cell starting with `=`, `+`, `-` or `@` (or a tab or carriage return,
which some programs skip before looking) is taken by Excel, LibreOffice and
Google Sheets as a formula: `=HYPERLINK(...)` in an address, an import's
bad line echoed into the rejects file, runs when an operator opens the file.
OWASP's advice is followed: such a cell is written with a leading `'`, which
the spreadsheet shows as text and does not display.

The import reads its own files back: a cell that starts with `'` followed
by what needed it loses that one `'`, so `-bob@example.org` exported as
`'-bob@example.org` comes back as itself. Written cells that start with `'`
and would be read back changed get one more, so every value survives a round
trip (`read(written(v)) == v`), while a hand-made file's `-bob@example.org`
is read as it stands.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def _needs(value: str) -> bool:
    """Whether the written cell must be guarded: a formula trigger first, or a `'` that
    reading back would take for a guard."""
    while value.startswith(QUOTE):
        value = value[1:]
    return value.startswith(TRIGGERS)


def written(value: object) -> str:
    """The cell as it goes into a CSV file."""
    text = "" if value is None else str(value)
    return QUOTE + text if _needs(text) else text


def read(cell: str) -> str:
    """The value of a cell as `written` put it (hand-made cells pass unchanged)."""
    if cell.startswith(QUOTE) and _needs(cell[1:]):
        return cell[1:]
    return cell


class Writer:
    """csv.writer whose every cell goes through `written`."""

    def __init__(self, file: IO[str]) -> None:
        self._writer: Any = csv.writer(file)

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([written(cell) for cell in row])
