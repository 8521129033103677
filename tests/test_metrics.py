"""What operators watch (README, operations): each service exports its consumer lag and the size
of its dead letter topics on /metrics."""
from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from services.segmentation.app import create_app
from services.segmentation.settings import SegmentationSettings
from shared.bus.base import OutgoingRecord, Record
from shared.bus.embedded import EmbeddedBus
from shared.consumer import ConsumerLoop, Transaction
from shared.events import (
    CUSTOMERS,
    INTERACTIONS,
    TYPE_HEADER,
    CustomerLinked,
    Event,
    Interaction,
    encode,
)
from shared.outbox import OutboxRelay
from shared.store import Store
from tests.helpers import eventually, running
from tests.segmentation.support import T0
from tests.store import counting


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in metrics.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()) and wanted:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_poison_message_shows_in_the_dead_letter_size_and_lag_returns_to_zero(tmp_path: Path) -> None:
    app = create_app(SegmentationSettings(data_dir=tmp_path, reevaluate_seconds=86400))
    async with running(app) as client:
        bus = app.state.runtime.bus

        async def dead_letters(expected: float) -> str | None:
            text = (await client.get("/metrics")).text
            size = sample(text, "funnelstream_bus_dead_letter_records", service="segmentation", topic="interactions.v1.dlq")
            return text if size == expected else None

        # A good message first: this service's own report (0 dead letters) replaces any earlier one.
        await bus.publish([encode(Interaction(event_id="e1", customer_id="ann", type="track", name="Signed Up",
                                              occurred_at=T0, received_at=T0))])
        await eventually(lambda: dead_letters(0.0), timeout=15)
        await bus.publish([OutgoingRecord(INTERACTIONS, "zed", b"{not json", {TYPE_HEADER: "Interaction"})])
        metrics = await eventually(lambda: dead_letters(1.0), timeout=15)
        lags = [sample(metrics, "funnelstream_bus_consumer_lag", service="segmentation", topic=INTERACTIONS, partition=str(p))
                for p in range(bus.partitions)]
        assert lags == [0.0] * bus.partitions  # the poison message did not stall its partition


async def test_a_batch_of_two_topics_counts_each_record_under_its_own_topic(tmp_path: Path) -> None:
    """One polled batch often holds interactions and identity links: each counts under its topic."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    async with store.engine.begin() as conn:
        await conn.run_sync(counting.metadata.create_all)
    bus = EmbeddedBus(tmp_path / "bus.db")
    await bus.start()

    async def ignore(event: Event, tx: Transaction) -> None:
        pass

    loop = ConsumerLoop("metrics-mixed", bus, store, counting.bus_tables, {Interaction: [ignore], CustomerLinked: [ignore]},
                        OutboxRelay(store, counting.bus_tables, bus))
    events: list[Event] = [counting.interaction("ann", n) for n in range(1, 4)]
    events.append(CustomerLinked(customer_id="ann", merged_id="visitor-1", at=T0))
    batch = [Record(r.topic, 0, offset, r.key, r.value, r.headers, 0) for offset, r in enumerate(map(encode, events))]
    try:
        await loop.process([batch[3], *batch[:3]])  # the link first: the batch is not labelled by it
    finally:
        await bus.stop()
        await store.dispose()
    text = generate_latest().decode()
    assert sample(text, "funnelstream_bus_messages_processed_total", service="metrics-mixed", topic=INTERACTIONS) == 3
    assert sample(text, "funnelstream_bus_messages_processed_total", service="metrics-mixed", topic=CUSTOMERS) == 1
