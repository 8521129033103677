"""UTCDateTime on SQLite writes exactly the text SQLAlchemy's own DATETIME writes (rows stored
before its faster formatting read and compare the same), reads back aware UTC, refuses naive."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import create_async_engine

from shared.events import Interaction
from shared.store import UTCDateTime

metadata = MetaData()
moments = Table("moments", metadata, Column("id", Integer, primary_key=True),
                Column("at", UTCDateTime), Column("plain", DateTime))
as_plain = Table("moments", MetaData(), Column("id", Integer, primary_key=True), Column("at", DateTime))  # SQLAlchemy's reading

VALUES = [
    datetime(2026, 12, 1, 4, 18, 36, 703223, tzinfo=UTC),
    datetime(2026, 12, 1, 4, 18, 36, tzinfo=UTC),  # no microseconds: still six digits
    datetime(2026, 3, 1, 2, 0, tzinfo=timezone(timedelta(hours=5))),  # another zone: stored as UTC
    datetime(2026, 1, 15, 9, 30, 1, 5, tzinfo=ZoneInfo("Europe/London")),  # UTC's offset, another zone object
    datetime(2026, 7, 15, 9, 30, tzinfo=ZoneInfo("Europe/London")),  # summer: +01:00
    datetime(2026, 2, 1, tzinfo=timezone(timedelta(seconds=30))),  # an offset of seconds
    datetime(5, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


async def test_the_text_is_sqlalchemys_and_reads_back_as_aware_utc(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            # `plain` is SQLAlchemy's DATETIME given the same moment as naive UTC: the reference text
            await conn.execute(moments.insert(), [{"id": i, "at": v, "plain": v.astimezone(UTC).replace(tzinfo=None)}
                                                  for i, v in enumerate(VALUES)])
            stored = (await conn.execute(text("SELECT at, plain FROM moments ORDER BY id"))).all()
            assert [at for at, _ in stored] == [plain for _, plain in stored]
            assert stored[1][0] == "2026-12-01 04:18:36.000000"
            back = (await conn.execute(select(moments.c.at).order_by(moments.c.id))).scalars().all()
            assert back == VALUES and all(v.tzinfo is UTC for v in back)
            later = (await conn.execute(select(moments.c.id).where(moments.c.at > VALUES[1]).order_by(moments.c.id))).scalars().all()
            assert later == [0, 7]
            # Text SQLite wrote itself (CURRENT_TIMESTAMP: no fraction) and other forms read as SQLAlchemy reads them.
            await conn.execute(text("INSERT INTO moments (id, at) VALUES (50, CURRENT_TIMESTAMP), "
                                    "(51, '2026-12-01 04:18:36'), (52, '2026-12-01 04:18:36.5')"))
            rows = (await conn.execute(select(moments.c.id, moments.c.at).where(moments.c.id >= 50).order_by(moments.c.id))).all()
            plain = (await conn.execute(select(as_plain.c.at).where(as_plain.c.id >= 50).order_by(as_plain.c.id))).scalars().all()
            assert [at for _, at in rows] == [p.replace(tzinfo=UTC) for p in plain] and all(at.tzinfo is UTC for _, at in rows)
            assert rows[1][1] == datetime(2026, 12, 1, 4, 18, 36, tzinfo=UTC)
            assert rows[2][1] == datetime(2026, 12, 1, 4, 18, 36, 500000, tzinfo=UTC)
            with pytest.raises(StatementError, match="naive datetime"):
                await conn.execute(moments.insert(), [{"id": 99, "at": datetime(2026, 1, 1)}])
    finally:
        await engine.dispose()


class TestProcessors:
    """UTCDateTime's own SQLite conversions against SQLAlchemy's DATETIME given the same moment as
    naive UTC: the same text for a time in UTC (as the clock, pydantic and SQLite give it) and for
    any other zone, read back the same; a naive time refused. On PostgreSQL, aware UTC."""

    TIMES = [
        datetime(2024, 3, 1, 12, 30, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 30, 0, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 3, 1, 12, 30, 5, 120000, tzinfo=timezone.utc),
        datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(0))),
        datetime(2024, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 3, 1, 23, 30, 0, 999, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2024, 3, 1, 23, 30, tzinfo=timezone(timedelta(seconds=30))),
        Interaction.model_validate({"event_id": "e", "customer_id": "c", "type": "track",
                                    "occurred_at": "2026-11-01T10:51:11.914373Z",
                                    "received_at": "2026-11-01T12:51:11+02:00"}).occurred_at,
        Interaction.model_validate({"event_id": "e", "customer_id": "c", "type": "track",
                                    "occurred_at": "2026-11-01T12:51:11.5+02:00",
                                    "received_at": "2026-11-01T12:51:11Z"}).occurred_at,
    ]

    @pytest.mark.parametrize("at", TIMES)
    def test_the_text_is_sqlalchemys(self, at: datetime) -> None:
        dialect = sqlite.dialect()
        ours: Any = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        theirs: Any = DateTime().dialect_impl(dialect).bind_processor(dialect)
        assert ours(at) == theirs(at.astimezone(UTC).replace(tzinfo=None))
        assert ours(None) is None

    @pytest.mark.parametrize("stored", ["2024-03-01 12:30:00.000001", "2024-03-01 12:30:05", "0001-01-01 00:00:00.000000",
                                        "9999-12-31 23:59:59.999999", "2024-03-01", "2024-03-01T12:30:00", None])
    def test_a_stored_time_reads_as_sqlalchemy_reads_it_in_utc(self, stored: str | None) -> None:
        dialect = sqlite.dialect()
        ours: Any = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
        theirs: Any = DateTime().dialect_impl(dialect).result_processor(dialect, None)
        if stored is None:
            assert ours(stored) is None
            return
        assert ours(stored) == theirs(stored).replace(tzinfo=UTC) and ours(stored).tzinfo is UTC
        bind: Any = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        assert ours(bind(ours(stored))) == ours(stored)  # read back as written

    def test_a_naive_time_is_refused(self) -> None:
        dialect = sqlite.dialect()
        with pytest.raises(ValueError, match="naive"):
            UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(datetime(2024, 3, 1, 12, 30))

    @pytest.mark.parametrize("at", TIMES)
    def test_postgresql_binds_aware_utc(self, at: datetime) -> None:
        dialect: Any = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
        bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        bound = bind(at) if bind is not None else UTCDateTime().process_bind_param(at, dialect)
        assert bound == at and bound.tzinfo is UTC
