"""Fixtures of the store suite: a store holding the counting consumer's tables, a real embedded
bus in a temporary file, and consumer loops wired to both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.bus.embedded import EmbeddedBus
from shared.consumer import ConsumerLoop
from shared.outbox import OutboxRelay
from shared.store import Store
from tests.store.counting import InteractionCounter, LoopFactory, bus_tables, metadata


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    async with store.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield store
    await store.dispose()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EmbeddedBus]:
    bus = EmbeddedBus(tmp_path / "bus.db", partitions=2, session_timeout=3)
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture
def make_loop(store: Store, bus: EmbeddedBus) -> LoopFactory:
    """A consumer loop around a handler; few attempts, so a poison message costs ~0.3 s."""

    def make(
        handler: InteractionCounter, max_attempts: int = 3, group: str = "counting"
    ) -> ConsumerLoop:
        relay = OutboxRelay(store, bus_tables, bus, interval=0.2)
        return ConsumerLoop(
            "counting", bus, store, bus_tables, handler.handlers(), relay, max_attempts, group
        )

    return make
