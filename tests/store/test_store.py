"""The store every service writes through: its migrations and its transactions, on SQLite and
on PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, func, insert, inspect, select, text
from sqlalchemy.engine import Connection

from shared.store import Store
from tests.conftest import create_pg_database, drop_pg_database
from tests.store.counting import (
    bus_tables,
    counts,
    interaction_counts,
    outbox_size,
    write_announcement,
)

SERVICES = ["ingest", "segmentation", "funnel", "followup", "recommendation"]


def migrations_of(service: str) -> Path:
    return importlib.import_module(f"services.{service}.app").MIGRATIONS  # type: ignore[no-any-return]


def head_of(service: str) -> str | None:
    config = Config()
    config.set_main_option("script_location", str(migrations_of(service)))
    return ScriptDirectory.from_config(config).get_current_head()


def declared_tables_of(service: str) -> MetaData:
    return importlib.import_module(f"services.{service}.store").metadata  # type: ignore[no-any-return]


async def migrated(url: str, service: str) -> Store:
    store = Store(url)
    await store.migrate(migrations_of(service))
    return store


async def schema(store: Store) -> dict[str, Any]:
    """Tables, their columns and the recorded revision: what a migration could change."""

    def read(conn: Connection) -> dict[str, Any]:
        inspector = inspect(conn)
        tables = {
            t: [c["name"] for c in inspector.get_columns(t)] for t in inspector.get_table_names()
        }
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        return {"tables": tables, "versions": versions}

    async with store.engine.connect() as conn:
        return await conn.run_sync(read)


@pytest.mark.parametrize("service", SERVICES)
class TestServiceMigrations:
    async def test_a_fresh_database_gets_the_processed_messages_and_outbox_tables(
        self, store_url: str, service: str
    ) -> None:
        store = await migrated(store_url, service)
        try:
            found = await schema(store)
            assert {"processed_messages", "outbox"} <= set(found["tables"])
            assert found["versions"] == [head_of(service)]
            async with store.transaction() as session:  # the service's own table objects fit
                await session.execute(insert(bus_tables.processed).values(message_id="m-1"))
                await write_announcement(session, "ann")
            assert await outbox_size(store) == 1
        finally:
            await store.dispose()

    async def test_the_migrated_tables_match_what_the_service_declares(
        self, store_url: str, service: str
    ) -> None:
        store = await migrated(store_url, service)

        def drift(conn: Connection) -> list[Any]:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, declared_tables_of(service)))

        try:
            async with store.engine.connect() as conn:
                assert await conn.run_sync(drift) == []
        finally:
            await store.dispose()

    async def test_migrating_again_changes_nothing_and_keeps_the_data(
        self, store_url: str, service: str
    ) -> None:
        store = await migrated(store_url, service)
        try:
            async with store.transaction() as session:
                await session.execute(insert(bus_tables.processed).values(message_id="kept"))
            before = await schema(store)
            await store.migrate(migrations_of(service))
            assert await schema(store) == before
            async with store.read() as session:
                assert list(await session.scalars(select(bus_tables.processed.c.message_id))) == [
                    "kept"
                ]
        finally:
            await store.dispose()

    async def test_two_replicas_starting_on_a_fresh_postgresql_database_both_migrate(
        self, store_url: str, service: str
    ) -> None:
        if store_url.startswith("sqlite"):
            pytest.skip("replicas share a PostgreSQL store; SQLite is one process's file")
        first, second = Store(store_url), Store(store_url)
        try:
            both = asyncio.gather(
                first.migrate(migrations_of(service)), second.migrate(migrations_of(service))
            )
            await asyncio.wait_for(both, timeout=20)  # unserialised, they deadlock rather than fail
            found = await schema(first)
            assert {"processed_messages", "outbox"} <= set(found["tables"])
            assert found["versions"] == [head_of(service)]
        finally:
            await first.dispose()
            await second.dispose()


class TestTransactions:
    async def test_a_transaction_that_completes_is_saved(self, store: Store) -> None:
        async with store.transaction() as session:
            await session.execute(
                insert(interaction_counts).values(customer_id="ann", interactions=1)
            )
            await write_announcement(session, "ann")
        assert await counts(store) == {"ann": 1}
        assert await outbox_size(store) == 1

    async def test_a_transaction_that_raises_leaves_nothing_written(self, store: Store) -> None:
        with pytest.raises(RuntimeError, match="handler failed"):
            async with store.transaction() as session:
                await session.execute(
                    insert(interaction_counts).values(customer_id="ann", interactions=1)
                )
                await write_announcement(session, "ann")
                raise RuntimeError("handler failed")
        assert await counts(store) == {}
        assert await outbox_size(store) == 0

    async def test_a_failed_transaction_does_not_block_the_next_one(self, store: Store) -> None:
        with pytest.raises(RuntimeError):
            async with store.transaction() as session:
                await session.execute(
                    insert(interaction_counts).values(customer_id="ann", interactions=1)
                )
                raise RuntimeError("handler failed")
        async with store.transaction() as session:
            await session.execute(
                insert(interaction_counts).values(customer_id="bob", interactions=1)
            )
        assert await counts(store) == {"bob": 1}

    async def test_concurrent_writers_all_succeed(self, store: Store) -> None:
        async def write(n: int) -> None:
            async with store.transaction() as session:
                await session.execute(
                    insert(interaction_counts).values(customer_id=f"c{n}", interactions=n)
                )
                await asyncio.sleep(0)  # let the others try to write meanwhile

        await asyncio.gather(*(write(n) for n in range(20)))
        assert await counts(store) == {f"c{n}": n for n in range(20)}

    async def test_a_reader_sees_only_committed_writes(self, store: Store) -> None:
        async with store.transaction() as session:
            await session.execute(
                insert(interaction_counts).values(customer_id="ann", interactions=1)
            )
            await session.flush()
            async with store.read() as reader:
                assert (
                    await reader.scalar(select(func.count()).select_from(interaction_counts)) == 0
                )
        assert await counts(store) == {"ann": 1}


class TestServicesSharingAProcess:
    async def test_two_services_starting_together_in_one_process_both_migrate(
        self, store_url: str, tmp_path: Path
    ) -> None:
        on_sqlite = store_url.startswith("sqlite")
        other_url = (
            f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
            if on_sqlite
            else await create_pg_database()
        )
        funnel, ingest = Store(store_url), Store(other_url)
        try:
            both = asyncio.gather(
                funnel.migrate(migrations_of("funnel")), ingest.migrate(migrations_of("ingest"))
            )
            await asyncio.wait_for(both, timeout=20)
            assert (await schema(funnel))["versions"] == [head_of("funnel")]
            assert (await schema(ingest))["versions"] == [head_of("ingest")]
        finally:
            await funnel.dispose()
            await ingest.dispose()
            if not on_sqlite:
                await drop_pg_database(other_url)
