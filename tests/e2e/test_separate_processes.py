"""The scale layout on one machine: each service its own process, its own PostgreSQL database,
the gateway proxying over HTTP, on the embedded bus and on Kafka (Tansu)."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from shared.bus import create_bus
from shared.settings import CommonSettings
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import READER, free_port, start_process, stop_process, wait_until_healthy

WRITE = ("dev-write-key", "")


@pytest.fixture(params=["embedded", "kafka"])
def bus_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "embedded":
        return {"BUS_BACKEND": "embedded", "BUS_PATH": str(tmp_path / "bus.db")}
    broker = request.getfixturevalue("kafka_broker")
    return {"BUS_BACKEND": "kafka", "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_IDEMPOTENT_PRODUCER": str(broker.idempotent_producer).lower(),
            "BUS_PARTITIONS": "4"}


@pytest.fixture
def deployment(bus_env: dict[str, str], tmp_path: Path, pg_available: bool) -> Iterator[str]:
    """ingest on PostgreSQL in its own process, the gateway in another; yields the gateway URL."""
    if not pg_available:
        pytest.skip("PostgreSQL not reachable")
    ingest_db = asyncio.run(create_pg_database())
    ingest_port, gateway_port = free_port(), free_port()
    processes = []
    try:
        ingest = start_process("services.ingest", {**bus_env, "PORT": str(ingest_port), "DATA_DIR": str(tmp_path),
                                                   "INGEST_DATABASE_URL": ingest_db}, tmp_path / "ingest.log")
        processes.append(ingest)
        wait_until_healthy(f"http://127.0.0.1:{ingest_port}", ingest, tmp_path / "ingest.log")
        gateway = start_process("services.gateway", {
            **bus_env, "PORT": str(gateway_port), "DATA_DIR": str(tmp_path / "gateway"),
            "GATEWAY_INGEST_URL": f"http://127.0.0.1:{ingest_port}",
        }, tmp_path / "gateway.log")
        processes.append(gateway)
        wait_until_healthy(f"http://127.0.0.1:{gateway_port}", gateway, tmp_path / "gateway.log")
        yield f"http://127.0.0.1:{gateway_port}"
    finally:
        for process in processes:
            stop_process(process)
        asyncio.run(drop_pg_database(ingest_db))


def poll(fn, timeout: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


async def published(env: dict[str, str], ids: set[str]) -> list[dict[str, object]]:
    """Our events as they reached interactions.v1 (read by a group of our own; the broker is
    shared with other tests, so other records are skipped). Reads a little past the last one so
    a duplicate would be seen."""
    bus = create_bus(CommonSettings(**{k.lower(): v for k, v in env.items()}))
    await bus.start()
    consumer = bus.consumer(f"e2e-reader-{time.monotonic_ns()}", ["interactions.v1"])
    await consumer.start()
    got: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    try:
        while {e["event_id"] for e in got} != ids and time.monotonic() < deadline:
            got += [e for r in await consumer.poll(timeout=0.5) if (e := orjson.loads(r.value))["event_id"] in ids]
        got += [e for r in await consumer.poll(timeout=1.0) if (e := orjson.loads(r.value))["event_id"] in ids]
    finally:
        await consumer.stop()
        await bus.stop()
    return got


class TestIngestAcrossProcesses:
    def test_events_sent_to_the_gateway_reach_the_timeline_and_the_bus(self, deployment: str, bus_env):
        run = uuid.uuid4().hex[:8]  # the Kafka broker outlives this test: ids of our own
        batch = {"batch": [
            {"type": "page", "anonymousId": "visitor-1", "name": "Home", "messageId": f"p-{run}",
             "context": {"page": {"referrer": "https://www.google.com/"}}},
            {"type": "identify", "anonymousId": "visitor-1", "userId": "ann", "messageId": f"i-{run}"},
            {"type": "track", "userId": "ann", "event": "Order Completed", "messageId": f"o-{run}",
             "properties": {"revenue": 20}},
        ]}
        answer = httpx.post(f"{deployment}/v1/batch", json=batch, auth=WRITE, timeout=10)
        assert answer.json() == {"success": True, "accepted": 3, "rejected": []}
        assert httpx.post(f"{deployment}/v1/batch", json=batch, auth=WRITE, timeout=10).status_code == 200  # retry

        def timeline() -> list[dict[str, object]]:
            response = httpx.get(f"{deployment}/api/customers/visitor-1/timeline", headers=READER, timeout=10)
            items = response.json().get("items", []) if response.status_code == 200 else []
            return items if len(items) == 3 else []

        items = poll(timeline)
        assert [i["event_id"] for i in items] and {i["customer_id"] for i in items} == {"ann"}
        ids = {f"p-{run}", f"i-{run}", f"o-{run}"}
        events = asyncio.run(published(bus_env, ids))
        assert sorted(e["event_id"] for e in events) == sorted(ids)  # once each, despite the retry
        by_id = {e["event_id"]: e for e in events}
        assert by_id[f"p-{run}"]["channel"] == "search"
        assert by_id[f"o-{run}"]["customer_id"] == "ann"

    def test_gateway_ready_reports_the_remote_service(self, deployment: str):
        ready = httpx.get(f"{deployment}/ready", timeout=10).json()
        assert ready["services"]["ingest"]["status"] == "ready"
        assert ready["services"]["ingest"]["checks"]["store"]["ok"]
