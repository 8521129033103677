"""Importing the same file again after ingest's dedupe window (INGEST_DEDUPE_WINDOW_HOURS) has
forgotten its message ids: ingest publishes the events again, under the same ids, and every
consumer counts each once (processed_messages). The whole gateway in-process with one clock the
test moves past the window; the import client sends through the ASGI app."""
from __future__ import annotations

import gzip
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services import import_client, importer
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.ingest.jobs import prune
from services.ingest.settings import IngestSettings
from services.ingest.store import seen_messages
from shared.bus.embedded import EmbeddedBus
from shared.events import ID_HEADER
from tests.helpers import READER, eventually
from tests.ingest.support import BusReader
from tests.retail_data import online_retail_slice

CONSUMERS = ("segmentation", "funnel")


class Quiet:
    def set_total(self, total: int) -> None: ...
    def start_at(self, done: int) -> None: ...
    def advance(self, count: int) -> None: ...
    def note(self, text: str) -> None: ...


@pytest.fixture
def gateway_app(data_dir: Path) -> FastAPI:
    return create_app(GatewaySettings())


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """The slice's first 6,000 rows: a few hundred invoices of some dozens of customers."""
    path = tmp_path / "retail.csv.gz"
    with gzip.open(online_retail_slice(), "rt", encoding="utf-8", newline="") as f:
        head = "".join(line for _, line in zip(range(6001), f, strict=False))
    with gzip.open(path, "wt", encoding="utf-8", newline="") as out:
        out.write(head)
    return path


async def send(gateway_app: FastAPI, path: Path) -> import_client.Tally:
    plan = importer.read(path, "auto", {})
    point = import_client.ResumePoint(importer.fingerprint(path), plan.format, {})
    target = import_client.Target(url="http://testserver", transport=httpx.ASGITransport(app=gateway_app))
    return await import_client.Sender(plan, path, point, target, Quiet()).run()


def processed() -> float:
    return min(REGISTRY.get_sample_value("funnelstream_bus_messages_processed_total",
                                         {"service": s, "topic": "interactions.v1"}) or 0.0 for s in CONSUMERS)


async def state(client: httpx.AsyncClient, customers: list[str]) -> dict[str, Any]:
    out = {}
    for customer in customers:
        profile = (await client.get(f"/api/customers/{customer}", headers=READER)).json()
        timeline = (await client.get(f"/api/customers/{customer}/timeline", headers=READER,
                                     params={"limit": 1000})).json()
        out[customer] = (profile["event_count"], profile["order_count"], profile["revenue"], len(timeline["items"]))
    report = await client.get("/api/funnels/lifecycle/report", headers=READER,
                              params={"from": "2010-01-01T00:00:00Z", "to": "2012-01-01T00:00:00Z"})
    assert report.status_code == 200, report.text
    out["lifecycle funnel"] = report.json()
    return out


class TestAfterTheDedupeWindow:
    async def test_a_second_import_days_later_is_published_again_under_the_same_ids_and_counted_once(
            self, gateway_app, client, clock, data_dir, history):
        before = processed()
        first = await send(gateway_app, history)
        events = first.sent
        assert first.accepted == events and first.rejected == 0
        await eventually(lambda: _at_least(before + events), timeout=60)
        customers = sorted({p.message["userId"] for p in importer.read(history, "auto", {}).messages})
        once = await state(client, customers)
        assert once["lifecycle funnel"]["stages"][0]["entered"] > 0

        clock.advance(hours=IngestSettings().dedupe_window_hours + 1)
        ingest = gateway_app.state.upstreams["ingest"].app.state.runtime
        await prune(ingest, IngestSettings())
        async with ingest.store.read() as session:
            assert (await session.execute(select(func.count()).select_from(seen_messages))).scalar() == 0

        again = await send(gateway_app, history)
        assert again.accepted == events
        records = await _interactions(data_dir, lambda rs: len(rs) >= 2 * events)
        ids = Counter(r.headers[ID_HEADER] for r in records)
        assert len(records) == 2 * events and set(ids.values()) == {2}  # published twice, one id each time
        assert all(r.headers[ID_HEADER] == _event_id(r) for r in records)
        await eventually(lambda: _at_least(before + 2 * events), timeout=60)
        assert await state(client, customers) == once


async def _at_least(count: float) -> bool:
    return processed() >= count


async def _interactions(data_dir: Path, until: Any) -> list[Any]:
    bus = EmbeddedBus(data_dir / "bus.db")
    await bus.start()
    reader = BusReader(bus, f"import-window-{uuid.uuid4().hex[:8]}")
    try:
        return await reader.read("interactions.v1", until)
    finally:
        await reader.stop()
        await bus.stop()


def _event_id(record: Any) -> str:
    import orjson

    return str(orjson.loads(record.value)["event_id"])
