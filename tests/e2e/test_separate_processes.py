"""The scale layout on one machine: each service its own process, its own PostgreSQL database,
the gateway proxying over HTTP, on the embedded bus and on Kafka (Tansu): events in through the
gateway, every service's API answering from what it consumed."""
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
from tests.deployment import SERVICES, separate_processes
from tests.helpers import READER

WRITE = ("dev-write-key", "")


@pytest.fixture(params=["embedded", "kafka"])
def bus_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "embedded":
        return {"BUS_BACKEND": "embedded", "BUS_PATH": str(tmp_path / "bus.db")}
    broker = request.getfixturevalue("own_kafka_broker")
    return {"BUS_BACKEND": "kafka", "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_IDEMPOTENT_PRODUCER": str(broker.idempotent_producer).lower(),
            "BUS_PARTITIONS": "4"}


@pytest.fixture
def deployment(bus_env: dict[str, str], tmp_path: Path, pg_available: bool) -> Iterator[str]:
    """Every service in its own process on its own PostgreSQL database, the gateway in another
    proxying to them over HTTP; yields the gateway URL."""
    if not pg_available:
        pytest.skip("PostgreSQL not reachable")
    with separate_processes(bus_env, tmp_path, {"SEGMENTATION_REEVALUATE_SECONDS": "1"}) as running:
        yield running.url


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


@pytest.mark.timeout(600)  # Kafka group joins on a shared broker late in a long session can take minutes
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

    def test_gateway_ready_reports_every_remote_service(self, deployment: str):
        def ready() -> dict[str, object]:
            answer = httpx.get(f"{deployment}/ready", timeout=10)
            return answer.json() if answer.status_code == 200 else {}

        services = poll(ready, timeout=180)["services"]
        assert set(services) == set(SERVICES)
        assert all(s["status"] == "ready" and s["checks"]["store"]["ok"] for s in services.values())

    def test_an_order_reaches_every_service(self, deployment: str):
        """One customer's events: ingest's timeline, segmentation's profile, the funnel's stage and
        the welcome follow-up, each from its own process and database, all through the gateway."""
        run = uuid.uuid4().hex[:8]
        user = f"lea-{run}"
        batch = {"batch": [
            {"type": "page", "userId": user, "name": "Home", "messageId": f"p-{run}"},
            {"type": "identify", "userId": user, "traits": {"email": "lea@example.com"}, "messageId": f"i-{run}"},
            {"type": "track", "userId": user, "event": "Product Viewed", "messageId": f"v-{run}"},
            {"type": "track", "userId": user, "event": "Order Completed", "messageId": f"o-{run}",
             "properties": {"revenue": 30}},
        ]}
        assert httpx.post(f"{deployment}/v1/batch", json=batch, auth=WRITE, timeout=10).json()["accepted"] == 4

        def get(path: str) -> dict[str, object]:
            answer = httpx.get(f"{deployment}{path}", headers=READER, timeout=10)
            return answer.json() if answer.status_code == 200 else {}

        profile = poll(lambda: (p := get(f"/api/customers/{user}")) and p.get("order_count") == 1 and p, timeout=180)
        assert profile["lifecycle"] == "new" and profile["revenue"] == 30
        stage = poll(lambda: (f := get(f"/api/funnels/lifecycle/customers/{user}")) and f.get("stage") == "purchase" and f,
                     timeout=180)
        assert [t["to_stage"] for t in stage["transitions"]] == ["awareness", "interest", "consideration", "purchase"]
        # Other policies' follow-ups may come first (the segment changes arrive one by one).
        followups = poll(lambda: (items := get(f"/api/followups?customer_id={user}").get("items"))
                         and "welcome_new" in {f["policy"] for f in items} and items, timeout=180)
        assert {f["policy"] for f in followups} >= {"welcome_new"}
        report = get("/api/funnels/lifecycle/report")
        assert report["stages"][3]["entered"] >= 1
