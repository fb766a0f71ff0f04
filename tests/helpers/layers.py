"""Reading the CLI's and the web's source for database work of their own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mailer"
# The front ends name a session's type and catch the database's errors; nothing else.
ALLOWED_IMPORTS = {"sqlalchemy.orm": {"Session"}, "sqlalchemy.exc": None}
# A session's ways to read or write rows; `commit`/`rollback`/`close` end a unit of work.
QUERY_METHODS = frozenset(
    {"execute", "scalars", "scalar", "get", "get_one", "query", "add", "add_all", "delete", "merge"}
)


def front_end_files() -> list[Path]:
    return sorted([*(PACKAGE / "cli").rglob("*.py"), *(PACKAGE / "web").rglob("*.py")])


def queries_in(path: Path) -> list[str]:
    return own_queries(path.read_text(), str(path.relative_to(PACKAGE.parent)))


def own_queries(source: str, where: str = "<source>") -> list[str]:
    """Each place in the code that imports a query construct from SQLAlchemy or asks a
    session (any name with "session" in it) for rows, as `file:line what`."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy":
                    found.append(f"{where}:{node.lineno} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            allowed = ALLOWED_IMPORTS.get(node.module or "", set())
            for alias in node.names:
                if allowed is not None and alias.name not in allowed:
                    found.append(f"{where}:{node.lineno} from {node.module} import {alias.name}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in QUERY_METHODS
            and isinstance(node.func.value, ast.Name)
            and "session" in node.func.value.id.lower()
        ):
            found.append(f"{where}:{node.lineno} {node.func.value.id}.{node.func.attr}(...)")
    return found
