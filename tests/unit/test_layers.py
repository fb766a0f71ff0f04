"""The CLI and the web stay a few lines over the operator layer: the database work is
the domain's, so a rule is never written a second time in a command or a route."""

from __future__ import annotations

import pytest

from tests.helpers.layers import front_end_files, own_queries, queries_in


def test_the_cli_and_the_web_run_no_queries_of_their_own():
    files = front_end_files()
    assert len(files) > 20  # the check reads the real trees
    assert [hit for path in files for hit in queries_in(path)] == []


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import select",
        "from sqlalchemy.orm import selectinload",
        "import sqlalchemy",
        "session.execute(x)",
        "db_session.scalars(x)",
        "session.get(Newsletter, 1)",
        "session.query(Newsletter)",
        "session.add(Newsletter())",
    ],
)
def test_the_check_sees_each_way_of_querying(source):
    assert len(own_queries(source)) == 1


def test_the_check_lets_a_session_type_errors_and_transactions_through():
    source = (
        "from sqlalchemy.orm import Session\n"
        "from sqlalchemy.exc import DataError\n"
        "session.commit()\nsession.rollback()\ntally.get('sent', 0)\n"
    )
    assert own_queries(source) == []
