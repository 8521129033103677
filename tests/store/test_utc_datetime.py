"""UTCDateTime on SQLite writes exactly the text SQLAlchemy's own DATETIME writes (rows stored
before its faster formatting read and compare the same), reads back aware UTC, refuses naive."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import create_async_engine

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
