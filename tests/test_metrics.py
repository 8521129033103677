"""What operators watch (README, operations): each service exports its consumer lag and the size
of its dead letter topics on /metrics."""
from __future__ import annotations

from pathlib import Path

from services.segmentation.app import create_app
from services.segmentation.settings import SegmentationSettings
from shared.bus.base import OutgoingRecord
from shared.events import INTERACTIONS, TYPE_HEADER, Interaction, encode
from tests.helpers import eventually, running
from tests.segmentation.support import T0


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
