"""During an upgrade, replicas of the earlier release run beside new ones on the same store. The
earlier release wrote and read `inbox` rows as a JSON array of messages; this one writes
`packed_inbox` (services/ingest/inbox.py's layout), so an earlier replica never meets a row it
cannot read (it would quarantine it), and this one applies what an earlier replica left in `inbox`."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, insert, select

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.ingest.store import inbox, packed_inbox
from shared.outage import Outage
from tests.helpers import READER, running
from tests.ingest.test_inbox import RECEIVED, accepted


async def test_rows_of_an_earlier_release_are_applied_and_new_rows_never_go_where_it_reads(data_dir: Path) -> None:
    app = create_app(IngestSettings())
    async with running(app) as client:
        runtime, pipeline = app.state.runtime, app.state.pipeline
        await runtime.bus.stop()  # the pipeline cannot apply anything: rows stay where they were written
        earlier = accepted([{"type": "track", "userId": "ann", "event": "Signed Up", "messageId": "from-before",
                             "timestamp": "2026-11-30T10:00:00Z"}])
        async with runtime.store.transaction() as session:  # as the earlier release wrote its rows
            await session.execute(insert(inbox).values(received_at=RECEIVED, messages=orjson.dumps(earlier)))
        sent = await client.post("/v1/track", json={"userId": "ann", "event": "Order Completed", "messageId": "after",
                                                    "timestamp": "2026-11-30T11:00:00Z"}, auth=("dev-write-key", ""))
        assert sent.json()["accepted"] == 1
        with pytest.raises(Outage):
            await pipeline.drain(runtime)

        async def counts() -> tuple[int, int]:
            async with runtime.store.read() as session:
                return (await session.scalar(select(func.count()).select_from(inbox)) or 0,
                        await session.scalar(select(func.count()).select_from(packed_inbox)) or 0)

        assert await counts() == (1, 1)  # the new request's row is not in `inbox`

        await runtime.bus.start()
        await pipeline.drain(runtime)
        assert await counts() == (0, 0)
        timeline = await client.get("/api/customers/ann/timeline", headers=READER)
        assert [e["event_id"] for e in timeline.json()["items"]] == ["after", "from-before"]
        assert sum((await runtime.bus.lag("upgrade-reader", ["interactions.v1"])).values()) == 2
        quarantine = await client.get("/api/ingest/quarantine", headers=READER)
        assert quarantine.json()["items"] == []
