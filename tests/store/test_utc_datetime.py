"""How every service binds a UTC time (shared.store: UTCDateTime, and `sqlite_utc_text` for the
statements that bind SQLite's text themselves). On SQLite exactly the text SQLAlchemy's own
DATETIME writes for the moment as naive UTC (rows stored before the faster formatting read and
compare the same), on PostgreSQL aware UTC; read back as aware UTC; a naive time refused. Both
remember what they bound, within a bound: the same answers in any order, from any zone, across a
DST fold, however many moments come."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import create_async_engine

from shared import store as shared_store
from shared.events import Interaction
from shared.store import REMEMBERED_TIMES, UTCDateTime, sqlite_utc_text

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
        assert ours(at) == theirs(at.astimezone(UTC).replace(tzinfo=None)) == sqlite_utc_text(at)
        assert ours(None) is None and sqlite_utc_text(None) is None

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
        for _ in range(2):  # and not remembered
            with pytest.raises(ValueError, match="naive"):
                UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(datetime(2024, 3, 1, 12, 30))
            with pytest.raises(ValueError, match="naive"):
                sqlite_utc_text(datetime(2024, 3, 1, 12, 30))

    @pytest.mark.parametrize("at", TIMES)
    def test_postgresql_binds_aware_utc(self, at: datetime) -> None:
        dialect: Any = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
        bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        bound = bind(at) if bind is not None else UTCDateTime().process_bind_param(at, dialect)
        assert bound == at and bound.tzinfo is UTC


# A remembered time binds as a first conversion does. The reference: the moment as naive UTC by
# hand (its wall time less its offset), as SQLAlchemy's DATETIME writes it on SQLite, aware UTC on
# PostgreSQL.
DIALECTS = [sqlite.dialect(), aiosqlite_dialect(), asyncpg_dialect()]  # type: ignore[no-untyped-call]
BERLIN = ZoneInfo("Europe/Berlin")
AT = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)


def _naive_utc(at: datetime) -> datetime:
    offset = at.utcoffset()
    assert offset is not None
    return at.replace(tzinfo=None) - offset


def _expected(dialect: Dialect, at: datetime | None) -> Any:
    if at is None:
        return None
    if dialect.name == "sqlite":
        return DateTime().dialect_impl(dialect).bind_processor(dialect)(_naive_utc(at))  # type: ignore[misc]
    return _naive_utc(at).replace(tzinfo=UTC)


def _binds(dialect: Dialect) -> list[Any]:
    """How a time is bound in `dialect`: the column type's conversion; on SQLite also the text
    ingest and funnel bind themselves."""
    bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    return [bind, sqlite_utc_text] if dialect.name == "sqlite" else [bind]


def _assert_bound_as_expected(dialect: Dialect, bind: Any, at: datetime | None) -> None:
    bound, expected = bind(at), _expected(dialect, at)
    assert bound == expected, at
    if dialect.name != "sqlite" and at is not None:
        assert bound.tzinfo is UTC and bound.replace(tzinfo=None) == _naive_utc(at), at


SAME_MOMENT = [AT, AT.astimezone(timezone(timedelta(hours=2))), AT.astimezone(BERLIN),
               datetime(2024, 3, 1, 12, 30, tzinfo=timezone.utc),
               TypeAdapter(datetime).validate_python("2024-03-01T12:30:00Z")]
# 02:30 happened twice in Berlin on 2024-10-27 (CEST, then CET): fold=1 is the second, an hour
# later, yet == the first. On 2024-03-31 it never happened: fold picks the offset before or after.
FOLD = [datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN), datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN, fold=1)]
GAP = [datetime(2024, 3, 31, 2, 30, tzinfo=BERLIN), datetime(2024, 3, 31, 2, 30, tzinfo=BERLIN, fold=1)]
OTHERS = [AT + timedelta(microseconds=1), AT + timedelta(days=400, seconds=7), None,
          datetime(2024, 10, 27, 0, 30, tzinfo=UTC), datetime(2024, 10, 27, 1, 30, tzinfo=UTC)]


def test_the_fold_and_the_gap_by_hand() -> None:
    assert [sqlite_utc_text(at) for at in FOLD + FOLD[::-1]] == ["2024-10-27 00:30:00.000000", "2024-10-27 01:30:00.000000",
                                                                 "2024-10-27 01:30:00.000000", "2024-10-27 00:30:00.000000"]
    assert [sqlite_utc_text(at) for at in GAP + GAP[::-1]] == ["2024-03-31 01:30:00.000000", "2024-03-31 00:30:00.000000",
                                                               "2024-03-31 00:30:00.000000", "2024-03-31 01:30:00.000000"]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: f"{d.name}+{d.driver}")
@pytest.mark.parametrize("order", ["forward", "backward"])
def test_a_remembered_time_binds_as_the_moment_in_utc(dialect: Dialect, order: str) -> None:
    values = [*SAME_MOMENT, *FOLD, *GAP, *OTHERS, *TestProcessors.TIMES]
    values = values if order == "forward" else values[::-1]
    for bind in _binds(dialect):
        for held in shared_store._held.values():  # from nothing remembered, then all of it
            held.clear()
        for value in values + values[::-1] + values:
            _assert_bound_as_expected(dialect, bind, value)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: f"{d.name}+{d.driver}")
def test_many_times_bind_right_and_only_so_many_are_remembered(dialect: Dialect) -> None:
    moments = [AT + timedelta(seconds=i, microseconds=i % 7) for i in range(2 * REMEMBERED_TIMES + 3000)]
    for bind in _binds(dialect):
        for value in moments + moments[::-1]:
            _assert_bound_as_expected(dialect, bind, value)
        # what is held, per driver (the memo's only state)
        assert 0 < max(len(held) for held in shared_store._held.values()) <= REMEMBERED_TIMES


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: f"{d.name}+{d.driver}")
def test_a_naive_time_is_refused_every_time(dialect: Dialect) -> None:
    for bind in _binds(dialect):
        for _ in range(2):
            with pytest.raises(ValueError, match="naive"):
                bind(datetime(2024, 3, 1, 12, 30))


async def test_both_stores_keep_each_moment_in_utc(store_url: str) -> None:
    """Through a real connection, twice (the second time remembered): read back as the moment in
    aware UTC; on SQLite the stored text is `sqlite_utc_text`'s."""
    values = [v for v in (*SAME_MOMENT, *FOLD, *GAP, *OTHERS, *TestProcessors.TIMES) if v is not None]
    engine = create_async_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(moments.insert(), [{"id": i, "at": v} for i, v in enumerate(values + values)])
            back = (await conn.execute(select(moments.c.at).order_by(moments.c.id))).scalars().all()
            assert back == [_naive_utc(v).replace(tzinfo=UTC) for v in values + values]
            assert all(at.tzinfo is UTC for at in back)
            if engine.dialect.name == "sqlite":
                stored = (await conn.execute(text("SELECT at FROM moments ORDER BY id"))).scalars().all()
                assert stored == [sqlite_utc_text(v) for v in values + values]
                assert stored == [_expected(engine.dialect, v) for v in values + values]
    finally:
        await engine.dispose()
