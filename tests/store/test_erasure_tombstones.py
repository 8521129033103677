"""Erasure tombstones keep a keyed hash, never the id: the key is ERASURE_KEY (the dev key only on
loopback; off loopback a process without it refuses to start), and stores upgraded from plain
tombstones have them hashed by their migration. SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

import shared.identity
from shared.auth import InsecureConfig
from shared.identity import id_hash, resolve_erasure_key, tombstone_hashes, use_erasure_key
from shared.settings import CommonSettings
from shared.store import Store

SERVICES = Path(__file__).resolve().parents[2] / "services"
AT = datetime(2024, 3, 1, tzinfo=UTC)
# The revision before tombstones were hashed, per service.
BEFORE = {"segmentation": "segmentation_0004", "funnel": "funnel_0002", "followup": "followup_0002"}


class TestErasureKey:
    def test_off_loopback_a_process_without_an_erasure_key_refuses_to_start(self) -> None:
        settings = CommonSettings(host="0.0.0.0", api_keys="a:admin", write_keys="w", erasure_key="")
        with pytest.raises(InsecureConfig, match="ERASURE_KEY"):
            resolve_erasure_key(settings)

    def test_on_loopback_the_dev_key_serves_and_a_configured_key_wins(self) -> None:
        assert resolve_erasure_key(CommonSettings(host="127.0.0.1", erasure_key="")) == b"dev-erasure-key"
        assert resolve_erasure_key(CommonSettings(host="0.0.0.0", erasure_key="s3cret")) == b"s3cret"

    def test_the_hash_depends_on_the_key_and_names_nobody(self) -> None:
        try:
            use_erasure_key(b"one")
            first = id_hash("ann@example.com")
            use_erasure_key(b"two")
            assert id_hash("ann@example.com") != first
            assert len(first) == 64 and "ann" not in first
        finally:
            use_erasure_key(b"dev-erasure-key")

    def test_remembered_hashes_are_the_hmac_under_the_current_key_and_forget_erased_ids(self) -> None:
        def reference(key: bytes, customer: str) -> str:
            return hmac.new(key, customer.encode(), hashlib.sha256).hexdigest()

        limit = shared.identity.REMEMBERED_HASHES
        try:
            use_erasure_key(b"one")
            ids = [f"c-{n}" for n in range(limit + 50)]  # past the bound: forgotten at once, then again
            for _ in range(2):
                assert [id_hash(i) for i in ids] == [reference(b"one", i) for i in ids]
                assert len(shared.identity._hashes) <= limit
            use_erasure_key(b"two")  # a new key: nothing remembered under the old one answers
            assert id_hash("c-1") == reference(b"two", "c-1")
            id_hash("ann")
            assert tombstone_hashes(["ann", "c-1"]) == [reference(b"two", "ann"), reference(b"two", "c-1")]
            assert "ann" not in shared.identity._hashes and "c-1" not in shared.identity._hashes
        finally:
            use_erasure_key(b"dev-erasure-key")


def _upgrade(conn: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


async def migrate(store: Store, service: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(SERVICES / service / "migrations"))
    async with store.engine.begin() as conn:
        await conn.run_sync(_upgrade, config, revision)


class TestMigration:
    @pytest.mark.parametrize("service", sorted(BEFORE))
    async def test_plain_tombstones_are_hashed_on_upgrade(self, store_url: str, service: str) -> None:
        store = Store(store_url)
        try:
            await migrate(store, service, BEFORE[service])
            async with store.transaction() as session:
                for customer in ("ann", "anon-ann"):
                    await session.execute(text("INSERT INTO erasures (customer_id, at) VALUES (:c, :at)"),
                                          {"c": customer, "at": AT if not store.is_sqlite else "2024-03-01 00:00:00.000000"})
            await migrate(store, service, "head")
            async with store.read() as session:
                rows = (await session.execute(text("SELECT id_hash FROM erasures ORDER BY id_hash"))).scalars().all()
            assert rows == sorted([id_hash("ann"), id_hash("anon-ann")])
        finally:
            await store.dispose()
