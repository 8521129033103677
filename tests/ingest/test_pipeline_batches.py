"""How much the pipeline takes into one transaction: rows by the size of their messages."""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from services.ingest.app import MIGRATIONS
from services.ingest.pipeline import (
    BYTES_PER_TRANSACTION,
    ROWS_BESIDE_REQUESTS,
    ROWS_PER_TRANSACTION,
    _oldest_rows,
    _within_bytes,
)
from services.ingest.store import INBOXES, packed_inbox
from shared.store import Store

MB = 1_000_000


def test_rows_are_taken_until_their_messages_would_pass_the_bound():
    half = BYTES_PER_TRANSACTION // 2
    assert _within_bytes([(1, half), (2, half), (3, 1)]) == [1, 2]


def test_small_rows_are_taken_together():
    assert _within_bytes([(i, 1_000) for i in range(1, 201)]) == list(range(1, 201))


def test_a_row_larger_than_the_bound_is_still_taken_alone():
    assert _within_bytes([(7, BYTES_PER_TRANSACTION + MB), (8, 10)]) == [7]


def test_no_rows_no_ids():
    assert _within_bytes([]) == []


class TestOldestRows:
    """The rows a transaction takes, read whole (a transaction beside requests) or sized first:
    the same rows, those `_within_bytes` picks from the oldest, on SQLite and PostgreSQL."""

    @pytest.fixture
    async def store(self, store_url: str) -> AsyncIterator[Store]:
        store = Store(store_url)
        await store.migrate(MIGRATIONS)
        yield store
        await store.dispose()

    @pytest.mark.parametrize("sizes", [[BYTES_PER_TRANSACTION // 2] * 3, [BYTES_PER_TRANSACTION + 10, 10], [10, 20, 30]])
    async def test_rows_read_whole_or_sized_first_are_the_same(self, store: Store, sizes: list[int]) -> None:
        at = datetime(2026, 12, 1, tzinfo=UTC)
        async with store.transaction() as session:
            ids = [(await session.execute(insert(packed_inbox).values(received_at=at, messages=b"x" * size)
                                          .returning(packed_inbox.c.id))).scalar_one() for size in sizes]
        for rows in (1, ROWS_BESIDE_REQUESTS, ROWS_BESIDE_REQUESTS + 1, ROWS_PER_TRANSACTION):
            expected = _within_bytes(list(zip(ids, sizes, strict=True))[:rows])
            async with store.transaction() as session:
                table, taken = await _oldest_rows(await session.connection(), rows, INBOXES)
            assert table is packed_inbox
            assert [row.id for row in taken] == expected, rows
            assert [len(row.messages) for row in taken] == [sizes[ids.index(i)] for i in expected]
            assert all(row.received_at == at and row.received_at.utcoffset() == timedelta(0) for row in taken)

    async def test_empty_inboxes_give_no_rows(self, store: Store) -> None:
        for rows in (ROWS_BESIDE_REQUESTS, ROWS_PER_TRANSACTION):
            async with store.transaction() as session:
                assert await _oldest_rows(await session.connection(), rows, INBOXES) == (packed_inbox, [])
