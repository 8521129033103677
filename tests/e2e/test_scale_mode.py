"""Scale mode is as correct as one process: two funnel and two segmentation replicas, each its own
process, sharing their service's PostgreSQL database and consumer group on Kafka (Tansu).

A stream of events (some customers stitched: their anonymous events and their link land in
different partitions, so in different replicas) is consumed while funnels are created and edited;
afterwards, each of those funnels reports what the same definition created after the stream
reports, on both replicas. Meanwhile both segmentation replicas' timers fire every second and the
scheduled pass runs once per interval between them, never failing on the other's run.

About a minute: six processes start on a shared machine, then the stream is consumed.
"""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.segmentation.store import bus_tables
from shared.bus import create_bus
from shared.bus.base import Bus
from shared.events import CUSTOMERS, INTERACTIONS, CustomerLinked, Event, Interaction, encode
from shared.periodic import DUE_AFTER
from shared.settings import CommonSettings
from shared.store import Store
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ADMIN, READER, free_port, start_process, stop_process, wait_until_healthy

pytestmark = pytest.mark.timeout(300)
periodic_runs = bus_tables.periodic

CUSTOMERS_IN_STREAM = 900
STITCHED = 150
REEVALUATE_SECONDS = 1.0
PASS = 'funnelstream_periodic_job_runs_total{job="segmentation-reevaluate",outcome="%s",service="segmentation"}'


@dataclass
class Deployment:
    bus_env: dict[str, str]
    databases: dict[str, str]  # service -> the database its replicas share
    replicas: dict[str, list[str]]  # service -> base URLs
    logs: dict[str, list[Path]]

    def log_text(self, service: str) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs[service])


@pytest.fixture
def deployment(own_kafka_broker: Any, tmp_path: Path, pg_available: bool) -> Iterator[Deployment]:
    """Two replicas of funnel and of segmentation, one database per service, Kafka with 4 partitions."""
    if not pg_available:
        pytest.skip("PostgreSQL not reachable")
    broker = own_kafka_broker
    bus_env = {"BUS_BACKEND": "kafka", "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
               "KAFKA_IDEMPOTENT_PRODUCER": str(broker.idempotent_producer).lower(), "BUS_PARTITIONS": "4"}
    services = ("funnel", "segmentation")
    databases = {name: asyncio.run(create_pg_database()) for name in services}
    started: list[tuple[str, Any, Path]] = []
    deployment = Deployment(bus_env, databases, {s: [] for s in services}, {s: [] for s in services})
    try:
        for name in services:
            for replica in (1, 2):
                port, log = free_port(), tmp_path / f"{name}-{replica}.log"
                env = {**bus_env, "PORT": str(port), "DATA_DIR": str(tmp_path / f"{name}-{replica}"),
                       f"{name.upper()}_DATABASE_URL": databases[name],
                       "SEGMENTATION_REEVALUATE_SECONDS": str(REEVALUATE_SECONDS), "FUNNEL_CLEANUP_SECONDS": "2"}
                started.append((f"http://127.0.0.1:{port}", start_process(f"services.{name}", env, log), log))
                deployment.replicas[name].append(started[-1][0])
                deployment.logs[name].append(log)
        for url, process, log in started:  # all starting at once: the slowest sets the pace
            wait_until_healthy(url, process, log, timeout=120)
        yield deployment
    finally:
        for _, process, _ in started:  # all stopping at once
            process.terminate()
        for _, process, _ in started:
            stop_process(process)
        for database in databases.values():
            asyncio.run(drop_pg_database(database))


def funnel(key: str, *events: str) -> dict[str, Any]:
    return {"key": key, "name": key, "conversion_window_days": 30, "stages": [
        {"key": re.sub(r"\W", "-", e.lower()), "name": e, "match": {"type": "track", "event": e}} for e in events]}


def stream(run: str) -> list[list[Event]]:
    """Chunks as a busy ingest would publish them: customers who view, most add, half buy; the
    stitched ones view anonymously, are linked, then buy under their user id."""
    start = datetime.now(UTC) - timedelta(hours=1)
    chunks: list[list[Event]] = []
    for first in range(0, CUSTOMERS_IN_STREAM, 50):
        chunk: list[Event] = []
        for i in range(first, first + 50):
            user, visitor, at = f"c-{run}-{i}", f"v-{run}-{i}", start + timedelta(seconds=i)
            steps = ["Product Viewed"] + (["Product Added"] if i % 3 else []) + (["Order Completed"] if i % 2 else [])
            who = visitor if i < STITCHED else user
            chunk.append(track(f"{who}-view", who, steps[0], at))
            if i < STITCHED:
                chunk.append(CustomerLinked(customer_id=user, merged_id=visitor, at=at))
            chunk += [track(f"{user}-{n}", user, step, at + timedelta(seconds=n)) for n, step in enumerate(steps[1:], 1)]
        chunks.append(chunk)
    return chunks


def track(event_id: str, customer: str, name: str, at: datetime) -> Interaction:
    return Interaction(event_id=event_id, customer_id=customer, user_id=None if customer.startswith("v-") else customer,
                       anonymous_id=customer if customer.startswith("v-") else None, type="track", name=name,
                       occurred_at=at, received_at=at)


async def publish(bus: Bus, chunks: list[list[Event]]) -> None:
    for chunk in chunks:
        await bus.publish([encode(e) for e in chunk])


async def lag(bus: Bus, group: str) -> int:
    return sum((await bus.lag(group, [INTERACTIONS, CUSTOMERS])).values())


async def until_lag_at_most(bus: Bus, group: str, records: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await lag(bus, group) > records:
        assert time.monotonic() < deadline, f"{group} still more than {records} records behind after {timeout} s"
        await asyncio.sleep(0.1)


async def caught_up(bus: Bus, group: str) -> None:
    await until_lag_at_most(bus, group, 0)


def passes(text: str, outcome: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(PASS % outcome))


async def pass_counts(client: httpx.AsyncClient, replicas: list[str]) -> tuple[float, float]:
    texts = [(await client.get(f"{url}/metrics")).text for url in replicas]
    return sum(passes(t, "ran") for t in texts), sum(passes(t, "skipped") for t in texts)


async def recorded_passes(url: str) -> int:
    store = Store(url)
    try:
        async with store.read() as session:
            runs = await session.scalar(select(periodic_runs.c.runs).where(periodic_runs.c.job == "segmentation-reevaluate"))
    finally:
        await store.dispose()
    return int(runs or 0)


async def reports(client: httpx.AsyncClient, url: str, key: str) -> dict[str, Any]:
    summary = await client.get(f"{url}/api/funnels/{key}", headers=READER)
    report = await client.get(f"{url}/api/funnels/{key}/report", headers=READER)
    assert summary.status_code == report.status_code == 200, (summary.text, report.text)
    return {"at_each_stage": summary.json()["customers"], "stages": report.json()["stages"],
            "customers": report.json()["customers"]}


class TestScaleMode:
    async def test_funnels_changed_during_a_stream_match_funnels_created_after_it(self, deployment: Deployment) -> None:
        run = uuid.uuid4().hex[:8]  # the broker outlives this test: ids and funnels of our own
        one, two = deployment.replicas["funnel"]
        bus = create_bus(CommonSettings(**{k.lower(): v for k, v in deployment.bus_env.items()}))
        await bus.start()
        try:
            await self.check(deployment, bus, run, one, two)
        finally:
            await bus.stop()

    async def check(self, deployment: Deployment, bus: Bus, run: str, one: str, two: str) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            ran_before, _ = await pass_counts(client, deployment.replicas["segmentation"])
            watched_from = time.monotonic()
            created = await client.post(f"{one}/api/funnels", json=funnel(f"edited-{run}", "Product Viewed", "Order Completed"),
                                        headers=ADMIN)
            assert created.status_code == 201, created.text
            await publish(bus, stream(run))
            backlog = await lag(bus, "funnel")
            changes = [  # each while the replicas consume the stream: 3/4, 1/2 and 1/4 of it still to go
                (0.75, lambda: client.post(f"{two}/api/funnels", headers=ADMIN,
                                           json=funnel(f"created-{run}", "Product Added", "Order Completed"))),
                (0.5, lambda: client.put(f"{one}/api/funnels/edited-{run}", headers=ADMIN,
                                         json=funnel(f"edited-{run}", "Product Added", "Order Completed"))),
                (0.25, lambda: client.put(f"{two}/api/funnels/edited-{run}", headers=ADMIN,
                                          json=funnel(f"edited-{run}", "Product Viewed", "Product Added", "Order Completed"))),
            ]
            for share, change in changes:
                await until_lag_at_most(bus, "funnel", int(backlog * share))
                answer = await change()
                assert answer.status_code in (200, 201), answer.text
            await caught_up(bus, "funnel")
            for key, events in ((f"created-{run}", ("Product Added", "Order Completed")),
                                (f"edited-{run}", ("Product Viewed", "Product Added", "Order Completed"))):
                after = await client.post(f"{two}/api/funnels", json=funnel(f"{key}-after", *events), headers=ADMIN)
                assert after.status_code == 201, after.text
                for replica in (one, two):
                    during, later = await reports(client, replica, key), await reports(client, replica, f"{key}-after")
                    assert during == later, (key, replica)
                    assert during["customers"] >= CUSTOMERS_IN_STREAM * 2 // 3  # the stream's buyers-to-be at least

            ran, skipped = await pass_counts(client, deployment.replicas["segmentation"])
            watched = time.monotonic() - watched_from
            on_record = await recorded_passes(deployment.databases["segmentation"])
        assert ran <= on_record <= ran + 1  # the store counts the passes the replicas ran (one may be under way)
        # Both replicas' timers fired every second; the pass ran about once a second between them.
        assert 1 <= ran - ran_before <= watched / (REEVALUATE_SECONDS * DUE_AFTER) + 2, (ran - ran_before, watched)
        assert skipped >= 1
        for service in ("funnel", "segmentation"):
            logs = deployment.log_text(service)
            assert "pk_job_runs" not in logs and not re.search(r"periodic job \S+ failed", logs), service
            assert not re.search(r"sent to \S+\.dlq", logs), f"{service} dead-lettered a message"
