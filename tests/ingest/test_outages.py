"""An outage is not a bad message: while the bus is down, accepted requests wait in the inbox and
are published once it is back; nothing is quarantined."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.outage import Outage
from tests.helpers import READER, running


class TestBusOutage:
    async def test_events_accepted_while_the_bus_is_down_are_published_when_it_returns(self, data_dir: Path):
        app = create_app(IngestSettings())
        async with running(app) as client:
            runtime, pipeline = app.state.runtime, app.state.pipeline
            await runtime.bus.stop()
            sent = await client.post("/v1/track", json={"userId": "ann", "event": "Order Completed",
                                                        "messageId": "during-outage"}, auth=("dev-write-key", ""))
            assert sent.json()["accepted"] == 1  # requests never wait on the bus

            with pytest.raises(Outage, match="bus is unreachable"):
                await pipeline.drain(runtime)
            quarantine = await client.get("/api/ingest/quarantine", headers=READER)
            assert quarantine.json()["items"] == []

            await runtime.bus.start()
            await pipeline.drain(runtime)
            timeline = await client.get("/api/customers/ann/timeline", headers=READER)
            assert [e["event_id"] for e in timeline.json()["items"]] == ["during-outage"]
            lag = await runtime.bus.lag("outage-reader", ["interactions.v1"])
            assert sum(lag.values()) == 1  # published once the bus is back
