"""Store helpers: each service owns one database (its own URL, tables and Alembic migrations).

A service declares its tables on `make_metadata()` and calls `add_bus_tables()` for the two tables
every consumer needs in its own database: `processed_messages` (so a redelivered message is a
no-op, committed in the same transaction as the state it changed) and `outbox` (events to publish,
written in that same transaction and relayed to the bus after commit).
"""
from __future__ import annotations

import asyncio
import logging
import random
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    TableValuedAlias,
    bindparam,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit id on PostgreSQL, the rowid alias (needed for autoincrement) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

log = logging.getLogger("funnelstream.store")
T = TypeVar("T")


def _sqlite_text(value: datetime | None) -> str | None:
    """The text a UTC time is stored as on SQLite, the text SQLAlchemy's DATETIME writes for it as
    naive UTC ("2026-12-01 04:18:36.703223"), from datetime's own isoformat, in C: SQLAlchemy
    formats it in Python, in about half as much time again."""
    if value is None:
        return None
    text = value.isoformat(" ", "microseconds")
    if text.endswith("+00:00"):  # UTC already, whichever zone object says so: no conversion
        return text[:-6]
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# Moments converted, per driver: at most this many held, then forgotten at once.
REMEMBERED_TIMES = 8192
_held: dict[str, dict[datetime, Any]] = {}


def _remembering(driver: str, convert: Callable[[datetime | None], Any]) -> Callable[[datetime | None], Any]:
    """`convert` (UTCDateTime's conversion for `driver`), remembering what it returned: a batch binds
    the same moments again and again (an event's time in each table that keeps it, a batch's time in
    every row it writes), and each conversion costs about a microsecond, a lookup a tenth of that."""
    held = _held.setdefault(driver, {})

    def remembered(value: datetime | None) -> Any:
        # fold=1 is left out: in one zone it compares equal to its fold=0 twin, another moment
        if value is None or value.fold:
            return convert(value)
        found = held.get(value)
        if found is None:
            found = convert(value)  # a naive time raises here: never held
            if len(held) >= REMEMBERED_TIMES:
                held.clear()
            held[value] = found
        return found

    return remembered


sqlite_utc_text: Callable[[datetime | None], Any] = _remembering("sqlite", _sqlite_text)
"""The text a UTCDateTime column holds on SQLite, for statements that bind it as text themselves
(a naive time raises ValueError). UTCDateTime binds with this very function there."""


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL and on SQLite (which keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # Every datetime bound goes through here (several per event in every consumer): on SQLite the
    # text of `sqlite_utc_text`, elsewhere SQLAlchemy's conversion; either remembered.
    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name == "sqlite":
            return sqlite_utc_text
        general = super().bind_processor(dialect)
        return None if general is None else _remembering(f"{dialect.name}+{dialect.driver}", general)

    # Reading, SQLAlchemy's DATETIME parses the text with a regular expression in Python; the
    # stored text with "+00:00" is what datetime.fromisoformat reads, in C, as aware UTC.
    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None] | None:
        general = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or general is None:
            return general

        def to_time(value: Any) -> datetime | None:
            if isinstance(value, str):
                try:
                    read = datetime.fromisoformat(value + "+00:00")
                except ValueError:
                    pass
                else:
                    if read.tzinfo is UTC:  # a date and a time, no zone of its own (else: the general way)
                        return read
            return general(value)

        return to_time


def dialect_of(db: AsyncSession | AsyncConnection) -> str:
    """The dialect's name ("postgresql" or "sqlite") of a session or a connection."""
    if isinstance(db, AsyncConnection):
        return db.dialect.name
    return db.bind.dialect.name if db.bind is not None else "sqlite"


def among(column: Column[Any], values: Sequence[str] | Sequence[int], db: AsyncSession | AsyncConnection,
          ) -> ColumnElement[bool]:
    """`column IN values`; on SQLite as one bound parameter, a JSON array read by json_each: the
    statement compiles once whatever the number of values, where an IN list of thousands binds (and
    SQLAlchemy renders) each value on its own, which costs twice as much on the batch lookups every
    consumer makes. Values of text or integer columns."""
    if dialect_of(db) == "postgresql":
        # An IN list there: with one array parameter, the statement's text never changes, and on
        # the end-to-end benchmark PostgreSQL then ran the processed-message lookup as a scan of the
        # whole table per batch (its backends' CPU 2.5x); with the list, index lookups.
        return column.in_(list(values))
    return column.in_(select(rows_of(values, db).c.value))


def rows_of(values: Sequence[str] | Sequence[int], db: AsyncSession | AsyncConnection) -> TableValuedAlias:
    """The values as rows of one column `value`, from one bound parameter: a JSON array read by
    json_each on SQLite, an array of text unnested on PostgreSQL (for text values there)."""
    if dialect_of(db) == "postgresql":
        return func.unnest(bindparam(None, list(values), type_=ARRAY(String()))).table_valued("value").render_derived()
    return func.json_each(bindparam(None, orjson.dumps(list(values)).decode())).table_valued("value")


def insert_ignoring_conflicts(table: Table, db: AsyncSession | AsyncConnection) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING, in the dialect of `db` (PostgreSQL or SQLite)."""
    insert = pg_insert if dialect_of(db) == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing()


# PostgreSQL aborts one transaction of a deadlock (40P01) and, above read committed, one that
# cannot be serialised (40001); run again, it succeeds. Nothing about the data was wrong.
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
# A unique key another transaction inserted after this one looked for it (two replicas creating
# one stitched customer's row): run again, the lookup finds it. Also what a real bug raises every
# time, so only worth a few more runs.
RACE_SQLSTATE = "23505"


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, wherever it sits in the exception's chain."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for link in chain:
        for error in (link, getattr(link, "orig", None)):
            state = getattr(error, "sqlstate", None)
            if isinstance(state, str):
                return state
    return None


CONFLICT_RUNS = 5  # runs of a job the database keeps aborting before its caller hears of it


async def run_through_conflicts(name: str, work: Callable[[], Awaitable[T]]) -> T:
    """`work` (a job of whole transactions), run again at once when the database aborted it as a
    deadlock victim or for a serialization failure: a pass that met a consumed batch on the same rows
    is not wrong, and waiting for the next interval would only delay what it finds."""
    for attempt in range(1, CONFLICT_RUNS + 1):
        try:
            return await work()
        except Exception as exc:
            if sqlstate(exc) not in CONFLICT_SQLSTATES or attempt == CONFLICT_RUNS:
                raise
            log.info("job %s hit a conflict (SQLSTATE %s); running it again", name, sqlstate(exc))
            await asyncio.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def lock_key(name: str) -> int:
    """The advisory lock key of a named lock (one key space per database)."""
    return zlib.crc32(f"funnelstream:{name}".encode())


async def hold_lock(session: AsyncSession, name: str, shared: bool = False) -> None:
    """Take the lock `name` until the transaction ends. Shared holders go together; an exclusive
    holder waits for them to commit and makes later ones wait for it. Take it first in the
    transaction (before any row lock), so it cannot be part of a deadlock. PostgreSQL: an advisory
    transaction lock. SQLite: nothing to take, a write transaction is alone already."""
    if session.bind is None or session.bind.dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await session.execute(text(f"SELECT {function}(:key)"), {"key": lock_key(name)})


def make_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


@dataclass(frozen=True)
class BusTables:
    processed: Table
    outbox: Table
    periodic: Table


def add_bus_tables(metadata: MetaData) -> BusTables:
    processed = Table(
        "processed_messages",
        metadata,
        Column("message_id", String(200), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    outbox = Table(
        "outbox",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(500), nullable=False),
        Column("value", LargeBinary, nullable=False),
        Column("headers", LargeBinary, nullable=False),  # JSON, written by orjson
    )
    return BusTables(processed, outbox, Table("periodic_runs", metadata, *_periodic_runs_columns()))


def _periodic_runs_columns() -> list[Column[Any]]:
    """Per periodic job, when its last successful run started (wall clock) and how many runs there
    were: replicas skip a job that ran less than an interval ago (see shared/periodic.py)."""
    return [
        Column("job", String(100), primary_key=True),
        Column("last_started_at", UTCDateTime, nullable=False),
        Column("runs", BigInteger, nullable=False),
    ]


class Store:
    """One service's database: an async engine, write transactions, reads, migrations."""

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            _ensure_sqlite_dir(url)
        # hide_parameters: a database error's text (logged, kept in dead letter headers) names the
        # statement, never the values, which may be a customer's email or phone.
        self.engine: AsyncEngine = create_async_engine(url, echo=echo, hide_parameters=True, **_engine_options(url))
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer: queue writers here instead of failing with "database is locked".
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: commits when the block ends, rolls back if it raises."""
        if self._write_lock is None:
            async with self.sessions.begin() as session:
                yield session
            return
        async with self._write_lock, self.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with AsyncSession(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def migrate(self, migrations_dir: Path) -> None:
        """Upgrade to the newest revision. Safe when several replicas start at once: PostgreSQL
        serialises them with an advisory lock named after the service, SQLite with an immediate
        (writer) transaction. Alembic keeps its state in process globals, so migrations in one
        process (the gateway running every service) also take turns."""
        config = Config()
        config.set_main_option("script_location", str(migrations_dir))
        async with _migration_lock(), self.engine.connect() as conn:
            if self.is_sqlite:
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                if not self.is_sqlite:
                    lock_id = zlib.crc32(migrations_dir.parent.name.encode())
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
                await conn.run_sync(_upgrade, config)


_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _migration_lock() -> asyncio.Lock:
    """One lock per event loop (an asyncio.Lock belongs to the loop it was first used on)."""
    loop = asyncio.get_running_loop()
    if loop not in _migration_locks:
        _migration_locks[loop] = asyncio.Lock()
    return _migration_locks[loop]


def _upgrade(conn: Connection, config: Config) -> None:
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_size": 10, "max_overflow": 10, "pool_pre_ping": True}


# Every connection to a SQLite store (the store's own, and any a service opens beside them).
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
    "PRAGMA secure_delete=ON",  # erased rows are zeroed, not left readable in free space
)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL so readers never block the writer; explicit BEGIN so transactions are real (pysqlite
    otherwise starts them lazily), IMMEDIATE for writers so they queue instead of deadlocking."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")


def create_bus_tables(op: Any) -> None:
    """For a service's first migration: the processed-messages and outbox tables."""
    op.create_table(
        "processed_messages",
        Column("message_id", String(200), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    op.create_table(
        "outbox",
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(500), nullable=False),
        Column("value", LargeBinary, nullable=False),
        Column("headers", LargeBinary, nullable=False),
    )


def create_periodic_runs_table(op: Any) -> None:
    """For the migration that brought periodic jobs once per interval across replicas."""
    op.create_table("periodic_runs", *_periodic_runs_columns())


def drop_bus_tables(op: Any) -> None:
    op.drop_table("outbox")
    op.drop_table("processed_messages")
