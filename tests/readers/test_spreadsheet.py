"""CSV cells we write never start a formula, and read back as they were."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.readers import spreadsheet

# Values that start with a trigger, behind quotes, or look like a guard already.
edgy = st.text(alphabet=st.sampled_from(["=", "+", "-", "@", "\t", "\r", "'", "a", " "]))


@given(st.one_of(st.text(), edgy))
def test_a_written_cell_never_starts_a_formula_and_reads_back_as_it_was(value):
    cell = spreadsheet.written(value)
    assert not cell.startswith(spreadsheet.TRIGGERS)
    assert spreadsheet.read(cell) == value


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("-bob@example.org", "-bob@example.org"),  # a hand-made file: as it stands
        ("'-bob@example.org", "-bob@example.org"),  # as we (or a spreadsheet user) guard it
        ("'quote@example.org", "'quote@example.org"),  # a quote that guards nothing stays
    ],
)
def test_a_cell_is_read_as_its_writer_meant(cell, value):
    assert spreadsheet.read(cell) == value
