"""Erasure reaches every copy the product keeps: after DELETE /api/customers/{id}, once every
service has applied it and the bus maintenance has run, no file under DATA_DIR (stores, the bus
log, dead letters, write-ahead logs) holds the customer's ids, email, phone or traits; a replay
of every service from offset 0 brings nothing of them back and leaves everyone else as before;
late events from before the erasure do not bring them back either. The whole gateway in-process
on the embedded bus, SQLite stores (and the same on PostgreSQL stores, where every table of every
store is queried)."""
from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from sqlalchemy import inspect, text

import services.followup.app as followup_app
from services.followup.app import run_scheduler
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.bus import Bus, OutgoingRecord
from shared.bus.embedded import EmbeddedBus
from shared.bus.kafka import KafkaBus
from shared.bus.maintenance import KafkaErasures, maintain
from shared.clock import FixedClock
from shared.events import (
    CUSTOMERS,
    FUNNEL,
    ID_HEADER,
    INTERACTIONS,
    SEGMENTS,
    TOPICS,
    TYPE_HEADER,
    CustomerErased,
    Interaction,
    encode,
)
from shared.service import Runtime
from tests.bus.tansu import Broker, start_broker
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ADMIN, READER, eventually, fix_clocks, rewind, running
from tests.segmentation.support import BASIC, T0, at

ANN, ANON_ANN = "ann-7d1f0c", "anon-ann-5c2e9b"
EMAIL, PHONE, TRAIT = "ann.erasure@example.com", "+47 9988 7766", "Zanzibar-Teal-42"
NEEDLES = [ANN, ANON_ANN, EMAIL, PHONE, TRAIT]
BOB, ANON_BOB = "bob-3a9e41", "anon-bob-11aa07"
GROUPS = {"segmentation": [CUSTOMERS, FUNNEL, INTERACTIONS], "funnel": [CUSTOMERS, INTERACTIONS, SEGMENTS],
          "followup": [CUSTOMERS, FUNNEL, SEGMENTS], "recommendation": [CUSTOMERS, INTERACTIONS]}
SERVICES = ("ingest", "segmentation", "funnel", "followup", "recommendation")


def mid() -> str:
    return str(uuid.uuid4())


def message(kind: str, user: str | None, anon: str | None, days: float, **fields: Any) -> dict[str, Any]:
    who = {k: v for k, v in (("userId", user), ("anonymousId", anon)) if v}
    return {"type": kind, "messageId": mid(), "timestamp": at(days), **who, **fields}


def history(user: str, anon: str, email: str, phone: str, trait: str) -> list[dict[str, Any]]:
    """Anonymous visits, later stitched by an identify with email, phone and traits; views, orders."""
    return [
        message("page", None, anon, -9, name="Home", context={"page": {"url": "https://shop.example/?utm_source=news"}}),
        message("track", None, anon, -8.5, event="Product Viewed", properties={"product_id": "p-1"}),
        message("identify", user, anon, -8, traits={"email": email, "phone": phone, "favourite_colour": trait}),
        message("track", user, None, -7, event="Checkout Started"),
        message("track", user, None, -6, event="Order Completed", properties={"revenue": 40, "order_id": mid()}),
        message("track", user, None, -2, event="Order Completed", properties={"revenue": 25, "order_id": mid()}),
    ]


class Product:
    """The gateway in-process, driven as the test needs."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client

    def runtime(self, service: str) -> Runtime:
        runtime: Runtime = self.app.state.upstreams[service].app.state.runtime
        return runtime

    @property
    def bus(self) -> Bus:
        return self.runtime("ingest").bus

    async def carry_out_erasures(self) -> int:
        """The bus side of erasures every service has applied (ingest's maintenance, one pass):
        records deleted on the embedded log, keys shredded on Kafka. Returns how many."""
        if isinstance(self.bus, EmbeddedBus):
            done = await maintain(self.bus, int(time.time() * 1000), retention_days=0)
            assert not done.erasures or done.erased_records > 17, done
            return done.erasures
        assert isinstance(self.bus, KafkaBus)
        erasures, done = KafkaErasures(self.bus), 0
        try:
            for _ in range(10):
                if done := await erasures.run_once(timeout=1.0):
                    break
        finally:
            await erasures.stop()
        return done

    async def send(self, *messages: dict[str, Any], rejected: int = 0) -> None:
        response = await self.client.post("/v1/batch", content=orjson.dumps({"batch": list(messages)}),
                                          headers={**BASIC, "Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert len(response.json()["rejected"]) == rejected, response.text
        await self.settle()

    async def settle(self) -> None:
        """Ingest's inbox drained, every consumer caught up on every topic and every outbox relayed,
        until nothing moves any more (one service's events are the next one's input)."""
        ingest = self.app.state.upstreams["ingest"].app
        for _ in range(5):
            await ingest.state.pipeline.drain(ingest.state.runtime)
            for group, topics in GROUPS.items():
                async def caught_up(group: str = group, topics: list[str] = topics) -> bool:
                    return not any((await self.bus.lag(group, topics)).values())

                try:
                    await eventually(caught_up, timeout=30)
                except AssertionError:
                    lagging = {k: v for k, v in (await self.bus.lag(group, topics)).items() if v}
                    raise AssertionError((group, lagging)) from None
            if not sum([await self.runtime(s).relay.flush() for s in SERVICES]):
                return

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=READER)

    async def views_of(self, customer: str) -> dict[str, Any]:
        """What every API says about a customer (status codes and bodies)."""
        followups = (await self.client.get("/api/followups", params={"customer_id": customer, "limit": 1000},
                                           headers=READER)).json()
        return {
            "timeline": _shown(await self.get(f"/api/customers/{customer}/timeline")),
            "profile": _shown(await self.get(f"/api/customers/{customer}")),
            "funnel": _shown(await self.get(f"/api/funnels/lifecycle/customers/{customer}")),
            "followups": sorted((f["policy"], f["status"], f["due_at"], f["reason"]) for f in followups["items"]),
        }


def _shown(response: httpx.Response) -> Any:
    return response.json() if response.status_code == 200 else response.status_code


@pytest.fixture
def environment(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Periodic passes only when the test runs them; webhooks configured (deliveries are kept)
    but not sent."""
    for name, value in {"SEGMENTATION_REEVALUATE_SECONDS": "86400", "FOLLOWUP_SCHEDULER_SECONDS": "86400",
                        "FUNNEL_CLEANUP_SECONDS": "86400", "INGEST_BUS_MAINTENANCE_SECONDS": "86400",
                        "FOLLOWUP_WEBHOOK_URLS": "http://127.0.0.1:9/hook",
                        "FOLLOWUP_WEBHOOK_SECRET": "s3cret"}.items():
        monkeypatch.setenv(name, value)

    async def no_sending(*_: object) -> int:
        return 0

    monkeypatch.setattr(followup_app, "send_webhooks", no_sending)
    return data_dir


@pytest.fixture
def stores() -> dict[str, str]:
    """Each service's store URL; empty: SQLite files in DATA_DIR."""
    return {}


@pytest.fixture
async def product(environment: Path, stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[FastAPI, FixedClock]]:
    for service, url in stores.items():
        monkeypatch.setenv(f"{service.upper()}_DATABASE_URL", url)
    app = create_app(GatewaySettings())
    clock = FixedClock(T0)
    fix_clocks(app, clock)
    yield app, clock


async def live_history(p: Product, clock: FixedClock) -> dict[str, Any]:
    """Two customers' histories, a rejected message and a dead letter for ann, a follow-up due
    with its webhook delivery; returns bob's views."""
    await p.send(*history(ANN, ANON_ANN, EMAIL, PHONE, TRAIT), *history(BOB, ANON_BOB, "bob@example.com", "+1 555", "Plain"))
    # rejected (a track needs an event name): kept in the quarantine with ann's phone in it
    await p.send(message("track", ANN, None, -1, properties={"phone": PHONE}), rejected=1)
    # a poison message about ann: every consumer of interactions.v1 dead-letters it
    poison = orjson.dumps({"customer_id": ANN, "type": "no-such-type", "traits": {"email": EMAIL}})
    await p.bus.publish([OutgoingRecord(INTERACTIONS, ANN, poison, {TYPE_HEADER: "Interaction", ID_HEADER: mid()})])
    await p.settle()
    dead = await p.bus.lag("nobody", [f"{INTERACTIONS}.dlq"])
    assert sum(dead.values()) == 3  # segmentation, funnel and recommendation each gave up on it
    clock.advance(days=2)
    await run_scheduler(p.runtime("followup"), p.app.state.upstreams["followup"].app.state.settings)
    await p.settle()
    ann = await p.views_of(ANN)
    assert ann["timeline"] != 404 and ann["profile"]["traits"]["favourite_colour"] == TRAIT
    assert ann["funnel"]["stage"] == "loyalty" and ann["followups"], ann
    assert await _found_in_stores(p, [EMAIL]), "the test should have put ann's email in the stores"
    return await p.views_of(BOB)


async def erase_ann(p: Product, clock: FixedClock) -> None:
    response = await p.client.delete(f"/api/customers/{ANON_ANN}", headers=ADMIN)
    assert response.status_code == 202, response.text
    assert response.json()["customer_id"] == ANN
    await p.settle()
    assert await p.carry_out_erasures() == 1
    # late: from before the erasure, arriving after it (an SDK retry, an import): dropped
    await p.send(message("track", ANN, None, -1, event="Order Completed", properties={"revenue": 9}),
                 message("page", None, ANON_ANN, -3, name="Home"),
                 message("identify", ANN, ANON_ANN, -1, traits={"email": EMAIL, "phone": PHONE}))
    if isinstance(p.bus, EmbeddedBus):  # (on Kafka the pass would wait for a group to time out)
        assert await p.carry_out_erasures() == 0


async def assert_gone(p: Product) -> None:
    for customer in (ANN, ANON_ANN):
        views = await p.views_of(customer)
        assert views == {"timeline": 404, "profile": 404, "funnel": 404, "followups": []}, views


async def _found_in_stores(p: Product, needles: list[str]) -> list[str]:
    """Every (service.table.column, needle) where a row of any table of any store holds a needle."""
    found = set()
    for service in SERVICES:
        async with p.runtime(service).store.engine.connect() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
            for name in names:
                result = await conn.execute(text(f'SELECT * FROM "{name}"'))
                columns = list(result.keys())
                for row in result.all():
                    for column, value in zip(columns, row, strict=True):
                        raw = value if isinstance(value, bytes) else str(value).encode()
                        found |= {f"{service}.{name}.{column}: {n}" for n in needles if n.encode() in raw}
    return sorted(found)


def readable_in_files(directory: Path) -> list[str]:
    """(file, needle) for every needle found in the raw bytes of any file under `directory`,
    write-ahead logs checkpointed first (and read too, whatever they still hold)."""
    for db in directory.rglob("*.db"):
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.name}: {n}" for n in NEEDLES if n.encode() in data]
    return found


def bus_records(bus_path: Path) -> list[tuple[str, str, bytes, str]]:
    with sqlite3.connect(bus_path) as conn:
        return conn.execute("SELECT topic, key, value, headers FROM records").fetchall()


class TestErasureEverywhere:
    async def test_no_file_holds_anything_readable_about_an_erased_customer(
        self, product: tuple[FastAPI, FixedClock], data_dir: Path
    ) -> None:
        app, clock = product
        async with running(app) as client:
            p = Product(app, client)
            bob_before = await live_history(p, clock)
            about_ann = [r for r in bus_records(data_dir / "bus.db") if ANN.encode() in r[2] or r[1] in (ANN, ANON_ANN)]
            assert len(about_ann) > 17
            await erase_ann(p, clock)
            await assert_gone(p)
            assert await p.views_of(BOB) == bob_before
            assert await _found_in_stores(p, NEEDLES) == []
        assert readable_in_files(data_dir) == []
        kinds = [orjson.loads(h)[TYPE_HEADER] for t, _, _, h in bus_records(data_dir / "bus.db") if t == CUSTOMERS]
        assert "ErasureRecorded" in kinds and "CustomerErased" not in kinds

    async def test_erasures_consumed_in_one_batch_leave_nothing_about_either_customer(
        self, product: tuple[FastAPI, FixedClock], data_dir: Path
    ) -> None:
        app, clock = product
        async with running(app) as client:
            p = Product(app, client)
            await p.send(*history("cy-2b7e", "anon-cy-2b7e", "cy@example.com", "+1 777", "Ochre"),
                         *history("dee-9f0a", "anon-dee-9f0a", "dee@example.com", "+1 888", "Umber"))
            # one publish: every consumer gets both erasures (and a late order) in one batch
            await p.bus.publish([encode(e) for e in (
                Interaction(customer_id="cy-2b7e", event_id=mid(), user_id="cy-2b7e", type="track",
                            name="Order Completed", occurred_at=clock.now(), received_at=clock.now()),
                CustomerErased(customer_id="cy-2b7e", merged_ids=["anon-cy-2b7e"], at=clock.now()),
                CustomerErased(customer_id="dee-9f0a", merged_ids=["anon-dee-9f0a"], at=clock.now()))])
            await p.settle()
            assert await p.carry_out_erasures() == 2
            for customer in ("cy-2b7e", "dee-9f0a"):
                views = await p.views_of(customer)
                assert (views["profile"], views["funnel"], views["followups"]) == (404, 404, []), views
        leftovers = [r for r in bus_records(data_dir / "bus.db")
                     if any(n in r[2] or n.decode() == r[1] for n in (b"cy-2b7e", b"dee-9f0a", b"Ochre", b"Umber"))]
        assert leftovers == []

    async def test_a_replay_of_every_service_from_offset_0_brings_nothing_back(
        self, product: tuple[FastAPI, FixedClock], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        app, clock = product
        async with running(app) as client:
            p = Product(app, client)
            bob_before = await live_history(p, clock)
            await erase_ann(p, clock)
        for group in GROUPS:
            await rewind(data_dir / "bus.db", group, [*TOPICS])
        replay_dir = tmp_path / "replay"
        monkeypatch.setenv("DATA_DIR", str(replay_dir))
        monkeypatch.setenv("BUS_PATH", str(data_dir / "bus.db"))
        replayed = create_app(GatewaySettings())
        fix_clocks(replayed, clock)
        async with running(replayed) as client:
            p = Product(replayed, client)
            await p.settle()
            await assert_gone(p)
            bob_after = await p.views_of(BOB)
        # why each segment holds is worked out again at the replay's time; which segments, not when
        for views in (bob_before, bob_after):
            views["profile"]["why"] = sorted(views["profile"]["why"])
        assert bob_after["profile"] == bob_before["profile"]
        assert bob_after["funnel"] == bob_before["funnel"]
        assert bob_after["followups"] == bob_before["followups"]
        assert readable_in_files(replay_dir) == []


@pytest.fixture
async def pg_stores(pg_available: bool) -> AsyncIterator[dict[str, str]]:
    if not pg_available:
        pytest.skip("PostgreSQL not reachable")
    urls = {service: await create_pg_database() for service in SERVICES}
    try:
        yield urls
    finally:
        for url in urls.values():
            await drop_pg_database(url)


class TestErasureOnPostgreSQL:
    @pytest.fixture
    def stores(self, pg_stores: dict[str, str]) -> dict[str, str]:
        return pg_stores

    async def test_no_table_of_any_store_holds_the_erased_customer(
        self, product: tuple[FastAPI, FixedClock], data_dir: Path
    ) -> None:
        app, clock = product
        async with running(app) as client:
            p = Product(app, client)
            bob_before = await live_history(p, clock)
            await erase_ann(p, clock)
            await assert_gone(p)
            assert await p.views_of(BOB) == bob_before
            assert await _found_in_stores(p, NEEDLES) == []
        assert readable_in_files(data_dir) == []  # the bus log


@pytest.fixture(scope="module")
def own_kafka_broker() -> Iterator[Broker]:
    """A broker of this module's own: the erasure waits for every consumer group of customers.v1,
    and other tests leave groups on the session's broker."""
    with start_broker() as broker:
        yield broker


class TestErasureOnKafka:
    @pytest.fixture
    def environment(self, environment: Path, own_kafka_broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Path:
        for name, value in {"BUS_BACKEND": "kafka", "KAFKA_BOOTSTRAP_SERVERS": own_kafka_broker.bootstrap,
                            "KAFKA_IDEMPOTENT_PRODUCER": str(own_kafka_broker.idempotent_producer).lower(),
                            "BUS_PARTITIONS": "2"}.items():
            monkeypatch.setenv(name, value)
        return environment

    async def test_nothing_in_the_broker_or_the_stores_names_the_erased_customer(
        self, product: tuple[FastAPI, FixedClock], data_dir: Path, own_kafka_broker: Broker
    ) -> None:
        app, clock = product
        async with running(app) as client:
            p = Product(app, client)
            bob_before = await live_history(p, clock)
            await erase_ann(p, clock)
            await assert_gone(p)
            assert await p.views_of(BOB) == bob_before
            assert await _found_in_stores(p, NEEDLES) == []
            # bob's records still read as published; ann's are placeholders now
            records = await all_records(p.bus)
        assert readable_in_files(data_dir) == []
        raw = await raw_broker_bytes(own_kafka_broker)
        assert [n for n in [*NEEDLES, "bob@example.com"] if n.encode() in raw] == []
        assert any(r.headers.get(TYPE_HEADER) == "Interaction" and r.key == BOB for r in records)
        assert not any(r.key in (ANN, ANON_ANN) for r in records)
        assert any(r.headers.get(TYPE_HEADER) == "RecordShredded" for r in records)


async def all_records(bus: Bus) -> list[Any]:
    """Every record of every topic (dead letters included), through the bus, from offset 0."""
    records: list[Any] = []
    for topic in (*TOPICS, *(f"{t}.dlq" for t in TOPICS)):
        for partition in range(bus.partitions):
            records += await bus.read(topic, partition, 0, 10_000)  # type: ignore[attr-defined]
    return records


async def raw_broker_bytes(broker: Broker) -> bytes:
    """Keys, values and headers of every record of every topic, read without the product's bus."""
    reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"raw-{uuid.uuid4().hex[:6]}",
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()
    data = b""
    try:
        reader.subscribe(pattern=".*")
        idle = 0
        while idle < 6:
            batches = await reader.getmany(timeout_ms=500)
            idle = 0 if batches else idle + 1
            for messages in batches.values():
                for m in messages:
                    data += (m.key or b"") + (m.value or b"") + b"".join(k.encode() + v for k, v in m.headers)
    finally:
        await reader.stop()
    assert data, "the broker should hold the product's records"
    return data
