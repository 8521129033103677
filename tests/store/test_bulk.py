"""shared/bulk.py: rows written through the driver are the rows SQLAlchemy's own executemany writes
(same stored text and bytes, read back the same), an insert that ignores conflicts keeps the first,
and parameters may come in any column order; `among` (one JSON parameter on SQLite, an IN list on PostgreSQL) matches what an IN list matches; on SQLite
and PostgreSQL."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, insert, select, text

from shared.bulk import BulkWrite, inserting_new
from shared.store import Store, UTCDateTime, among

metadata = MetaData()
ours = Table("bulk_ours", metadata, Column("id", Integer, primary_key=True), Column("name", String(50)),
             Column("at", UTCDateTime), Column("blob", LargeBinary))
theirs = Table("bulk_theirs", metadata, Column("id", Integer, primary_key=True), Column("name", String(50)),
               Column("at", UTCDateTime), Column("blob", LargeBinary))

ROWS = [
    (1, "ada", datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC), b"\x00\x01"),
    (2, "bob", datetime(2026, 12, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))), None),  # stored as 10:00 UTC
    (3, None, None, b""),
]


async def test_driver_rows_equal_sqlalchemys_rows(store_url: str) -> None:
    store = Store(store_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        # keys in another order than the table's columns: positions map them
        write = BulkWrite(inserting_new(ours), ("blob", "at", "name", "id"))
        async with store.transaction() as session:
            await write.run(session, [(blob, at, name, id_) for id_, name, at, blob in ROWS])
            await session.execute(insert(theirs), [dict(zip(("id", "name", "at", "blob"), row, strict=True)) for row in ROWS])
        async with store.transaction() as session:  # a conflicting id is ignored, a new one added
            await write.run(session, [(b"x", None, "changed", 1), (None, None, "dan", 4)])
        async with store.read() as session:
            raw_ours = (await session.execute(text("SELECT id, name, at, blob FROM bulk_ours WHERE id < 4 ORDER BY id"))).all()
            raw_theirs = (await session.execute(text("SELECT id, name, at, blob FROM bulk_theirs ORDER BY id"))).all()
            assert raw_ours == raw_theirs  # the very text and bytes stored
            back = (await session.execute(select(ours).order_by(ours.c.id))).all()
        assert [tuple(r) for r in back] == [
            (1, "ada", datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC), b"\x00\x01"),
            (2, "bob", datetime(2026, 12, 1, 10, 0, tzinfo=UTC), None),
            (3, None, None, b""),
            (4, "dan", None, None),
        ]
    finally:
        await store.dispose()


async def test_no_rows_writes_nothing(store_url: str) -> None:
    store = Store(store_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with store.transaction() as session:
            await BulkWrite(inserting_new(ours), ("id", "name", "at", "blob")).run(session, [])
        async with store.read() as session:
            assert (await session.execute(select(ours))).all() == []
    finally:
        await store.dispose()


async def test_among_finds_exactly_the_values_held(store_url: str) -> None:
    """`among` (one bound parameter for a whole IN list) against Python's own membership: text
    with quotes, backslashes, JSON-looking text and non-ASCII, a value longer than the column (never cut
    to fit), integers, no values, a repeated value."""
    held = ["plain", 'quo"te', "back\\slash", "[1,2]", "ünï©ødé", "a" * 50, "sp ace"]
    asked = [*held[::2], "missing", 'quo"te', "", "UNÏ", "a" * 60, *held[1::3]]  # "a" * 60 starts like "a" * 50: no match
    assert "a" * 50 not in asked
    store = Store(store_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with store.transaction() as session:
            await session.execute(insert(ours), [{"id": i, "name": name} for i, name in enumerate(held)])
        async with store.read() as session:
            found = set((await session.execute(select(ours.c.name).where(among(ours.c.name, asked, session)))).scalars())
            assert found == set(held) & set(asked)
            assert (await session.execute(select(ours.c.id).where(among(ours.c.name, [], session)))).all() == []
            ids = set((await session.execute(select(ours.c.id).where(among(ours.c.id, [0, 3, 99], session)))).scalars())
            assert ids == {0, 3}
    finally:
        await store.dispose()
