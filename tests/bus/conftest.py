"""The bus contract runs on every backend: the embedded log, and Kafka (Tansu unless
KAFKA_BOOTSTRAP_SERVERS names a broker)."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared.bus.base import Bus


BusFactory = Callable[[], Bus]


@pytest.fixture(params=["embedded", "kafka"])
async def make_bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BusFactory]:
    """A factory of started bus clients on one backend (several clients = several processes)."""
    started: list[Bus] = []
    if request.param == "kafka":
        from shared.bus.kafka import KafkaBus

        broker = request.getfixturevalue("kafka_broker")

        def new() -> Bus:
            return KafkaBus(broker.bootstrap, partitions=4, idempotent=broker.idempotent_producer, session_timeout_ms=6000)
    else:
        from shared.bus.embedded import EmbeddedBus

        def new() -> Bus:
            return EmbeddedBus(tmp_path / "bus.db", partitions=4, session_timeout=3)

    async def factory() -> Bus:
        bus = new()
        await bus.start()
        started.append(bus)
        return bus

    yield factory  # type: ignore[misc]
    for bus in started:
        await bus.stop()


@pytest.fixture
def topic() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"
