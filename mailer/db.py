"""Engine and session factory, one engine per database URL per process.

SQLite is the embedded default and is shared by the web app, a worker and
beat at once: WAL and a busy timeout keep writers from failing on a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, any_, bindparam, create_engine, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # As many pooled connections as the web app has request threads (anyio: 40), so
    # a busy moment reuses connections instead of opening and closing overflow ones.
    return create_engine(url, pool_pre_ping=True, pool_size=40, max_overflow=10)


def get_engine(url: str) -> Engine:
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
            _factories[url] = sessionmaker(_engines[url], expire_on_commit=False)
        return _engines[url]


def async_commit_engine(url: str) -> Engine:
    """PostgreSQL connections in autocommit whose commits don't wait for the WAL
    flush (`synchronous_commit` off), for the per-message send writes only: a
    pool of their own, so the setting never leaks into any other unit of work
    and is not set and reset around every batch."""
    key = url + "#async-commit"
    with _lock:
        if key not in _engines:
            _engines[key] = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=2,
                isolation_level="AUTOCOMMIT",
                connect_args={"options": "-c synchronous_commit=off"},
            )
        return _engines[key]


def session_factory(url: str) -> sessionmaker[Session]:
    get_engine(url)
    return _factories[url]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_all() -> None:
    """Forget pooled connections, e.g. after a fork or between tests."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()


def is_postgres(session_or_engine: Session | Engine) -> bool:
    bind = (
        session_or_engine.get_bind()
        if isinstance(session_or_engine, Session)
        else session_or_engine
    )
    return bind.dialect.name == "postgresql"


def conflict_insert(session_or_engine: Session | Engine, model: Any) -> Any:
    """The dialect's own INSERT for `model`, the one that can say ON CONFLICT DO NOTHING."""
    return (postgresql if is_postgres(session_or_engine) else sqlite).insert(model)


def has_table(engine: Engine, name: str) -> bool:
    return inspect(engine).has_table(name)


def among(column: Any, values: list[Any], postgres: bool) -> Any:
    """`column IN (values)`; on PostgreSQL `column = ANY(array)`: one parameter
    instead of one per value, which SQLAlchemy and psycopg would otherwise
    expand and parse (for a 5,000-address chunk, most of the query's cost)."""
    if postgres:
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


@dataclass(frozen=True)
class Prepared:
    """A Core statement prepared on one libpq connection, run with text parameters.

    SQLAlchemy's execution path (cache lookup, parameter processing, result
    wrapping) cost more CPU than PostgreSQL spent running the per-message
    write, so that one statement goes through libpq directly; it is still
    written once, in Core, and SQLite runs the same statement through the
    session. The casts SQLAlchemy renders fix the parameter types, so one
    plan serves every call.
    """

    name: bytes
    names: tuple[str, ...]
    constants: Mapping[str, Any]
    # The statement's own literals in text form, once: a call encodes only its own.
    _fixed: Mapping[str, bytes | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fixed", {n: _pg_text(v) for n, v in self.constants.items()})

    def values(self, params: Mapping[str, Any]) -> list[bytes | None]:
        """The call's parameters, and the statement's own literals, in placeholder order."""
        fixed = self._fixed
        return [_pg_text(params[n]) if n in params else fixed[n] for n in self.names]


def _pg_text(value: object) -> bytes | None:
    """A parameter in PostgreSQL's text format (aware datetimes as ISO 8601)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat().encode()
    return str(value).encode()


def prepare(pgconn: Any, name: bytes, statement: Any) -> Prepared:
    """Prepare `statement` as `name` on a psycopg `pgconn` (once per connection:
    a pooled connection that has it already is fine)."""
    from psycopg import errors
    from psycopg.pq import DiagnosticField, ExecStatus
    from sqlalchemy.dialects.postgresql import psycopg

    # No expanding IN (...) in it: its placeholders would need values to render.
    compiled = statement.compile(dialect=psycopg.dialect(paramstyle="numeric_dollar"))
    result = pgconn.prepare(name, compiled.string.encode())
    if result.status != ExecStatus.COMMAND_OK and (
        result.error_field(DiagnosticField.SQLSTATE) != b"42P05"  # already prepared here
    ):
        raise errors.error_from_result(result)
    return Prepared(name, tuple(compiled.positiontup or ()), dict(compiled.params))
