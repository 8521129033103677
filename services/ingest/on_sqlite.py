"""The pipeline's statements on SQLite in one round trip each to SQLite's thread.

Through SQLAlchemy's aiosqlite cursor a statement takes three or four round trips (a cursor, the
statement, its rows, closing the cursor), each ~50 us of CPU between the event loop and SQLite's
thread, and SQLAlchemy's statement handling on top: ~0.2 ms a statement, paid on every pipeline
transaction whatever its size. Here a statement, compiled once, runs on the driver's connection
under the same transaction (the same sqlite3 connection, so it commits or rolls back with it) in
one round trip. PostgreSQL keeps SQLAlchemy's path (asyncpg has no thread to cross). Bulk
inserts take the same shortcut in shared/bulk.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


def is_sqlite(db: AsyncConnection) -> bool:
    return db.dialect.name == "sqlite"


async def driver(db: AsyncConnection) -> Any:
    """The aiosqlite connection under `db` (in `db`'s transaction)."""
    return (await db.get_raw_connection()).driver_connection


class SqliteStatement:
    """A statement of constant shape: its SQL for SQLite and its positional parameters, taken by
    name (those with a value in the statement, as json_extract's paths, keep it)."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._compiled: tuple[str, tuple[str, ...], dict[str, Any]] | None = None

    def _compile(self, db: AsyncConnection) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        if self._compiled is None:
            compiled = self._statement.compile(dialect=db.dialect)
            assert isinstance(compiled, SQLCompiler)  # SQLite binds positionally: ?
            names = tuple(compiled.positiontup or ())
            self._compiled = str(compiled), names, {n: compiled.binds[n].value for n in names}
        return self._compiled

    async def rows(self, db: AsyncConnection, **values: Any) -> Sequence[tuple[Any, ...]]:
        sql, names, fixed = self._compile(db)
        rows: Sequence[tuple[Any, ...]] = await (await driver(db)).execute_fetchall(
            sql, [values[n] if n in values else fixed[n] for n in names])
        return rows
