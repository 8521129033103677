"""Many rows through one statement, with less of SQLAlchemy per row.

A consumed batch writes thousands of rows (behaviour events, orders, profiles). Executed the
usual way, SQLAlchemy builds a parameter dict per row and walks it per column; here the
statement is compiled once per dialect, each row is a plain tuple, every column's own bind
conversion (UTC datetimes, bytes) is applied as SQLAlchemy would, and the driver's executemany
gets the result. Same SQL, same values stored, on SQLite and PostgreSQL.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ClauseElement, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class Compiled:
    """A statement as the driver takes it: its SQL, and per positional parameter, where it sits
    in a row given in `BulkWrite.keys` order and the conversion its type binds with."""

    sql: str
    positions: tuple[int, ...]
    converts: tuple[Callable[[Any], Any] | None, ...]

    def parameters(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The rows reordered and converted, a column at a time (a loop per column, not per value)."""
        columns = list(zip(*rows, strict=True))
        return list(zip(*(columns[i] if convert is None else map(convert, columns[i])
                          for i, convert in zip(self.positions, self.converts, strict=True)), strict=True))


@dataclass
class BulkWrite:
    """`build(dialect name)` makes the statement; rows give their values in `keys` order (the
    names of its bound parameters: column names for an INSERT)."""

    build: Callable[[str], ClauseElement]
    keys: tuple[str, ...]
    _compiled: dict[str, Compiled] = field(default_factory=dict)

    def compiled(self, dialect: Dialect) -> Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            statement = self.build(dialect.name).compile(dialect=dialect, column_keys=list(self.keys), for_executemany=True)
            assert isinstance(statement, SQLCompiler)  # both dialects bind positionally: ? and $1
            names = statement.positiontup or []
            binds = {b.key: b for b in statement.binds.values()}
            found = self._compiled[dialect.name] = Compiled(
                str(statement), tuple(self.keys.index(n) for n in names),
                tuple(binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names))
        return found

    async def run(self, db: AsyncSession | AsyncConnection, rows: Sequence[Sequence[Any]]) -> None:
        """The rows through the statement, in the transaction of `db` (a session or its connection)."""
        if not rows:
            return
        connection = db if isinstance(db, AsyncConnection) else await db.connection()
        compiled = self.compiled(connection.dialect)
        parameters = compiled.parameters(rows)
        if connection.dialect.name == "sqlite":
            # On aiosqlite's own connection (the same SQLite connection, so the same transaction):
            # one round trip to its thread, where SQLAlchemy's cursor takes three or four (a cursor,
            # the statement, its result, closing it), ~50 us of CPU each.
            driver: Any = (await connection.get_raw_connection()).driver_connection
            await driver.executemany(compiled.sql, parameters)
        else:
            await connection.exec_driver_sql(compiled.sql, parameters)


def inserting_new(table: Table) -> Callable[[str], ClauseElement]:
    """INSERT ... ON CONFLICT DO NOTHING in the dialect named (shared.store's
    insert_ignoring_conflicts, for a dialect rather than a session)."""
    return lambda dialect: (pg_insert if dialect == "postgresql" else sqlite_insert)(table).on_conflict_do_nothing()
