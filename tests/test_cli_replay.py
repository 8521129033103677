"""`funnelstream replay --service NAME` as an operator runs it: ingest, segmentation and funnel as
their own processes; events in; the answers captured; segmentation and funnel stopped; the command
run (a subprocess, the same environment); the services started again answer the same. On SQLite
and PostgreSQL with the embedded bus, and on Kafka (Tansu). And its one-line errors, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ADMIN, READER, ROOT, free_port, start_process, stop_process, wait_until_healthy

WRITE = ("dev-write-key", "")
CONSUMERS = ("segmentation", "funnel")
CUSTOMERS = ["ann", "bob", "anon-bob", "cy", "dan"]
SEGMENT = {"key": "pro-buyers", "name": "Pro buyers", "rule": {"all": [
    {"field": "traits.plan", "op": "eq", "value": "pro"}, {"field": "order_count", "op": "gte", "value": 1}]}}
FUNNEL = {"key": "view-to-buy", "name": "View to buy", "conversion_window_days": 30, "stages": [
    {"key": "viewed", "name": "Viewed", "match": {"type": "track", "event": "Product Viewed"}},
    {"key": "bought", "name": "Bought", "match": {"type": "track", "event": "Order Completed"}}]}


def at(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def history() -> list[dict[str, Any]]:
    """Identifies, a stitched anonymous visitor, channels, orders, a late event, a duplicate."""
    viewed = {"type": "track", "event": "Product Viewed", "properties": {"product_id": "p1"}}
    ordered = {"type": "track", "event": "Order Completed"}
    email = {"page": {"url": "https://shop.example/?utm_source=newsletter&utm_medium=email"}}
    return [
        {"type": "identify", "messageId": "i-ann", "userId": "ann", "timestamp": at(-20), "traits": {"plan": "pro"}},
        {**viewed, "messageId": "v-ann", "userId": "ann", "timestamp": at(-10), "context": email},
        {**ordered, "messageId": "o-ann-1", "userId": "ann", "timestamp": at(-9), "properties": {"revenue": 40}},
        {**ordered, "messageId": "o-ann-2", "userId": "ann", "timestamp": at(-2), "properties": {"revenue": 60}},
        {**viewed, "messageId": "v-anon-bob", "anonymousId": "anon-bob", "timestamp": at(-6)},
        {"type": "identify", "messageId": "i-bob", "userId": "bob", "anonymousId": "anon-bob", "timestamp": at(-5),
         "traits": {"plan": "free"}},
        {**ordered, "messageId": "o-bob", "userId": "bob", "timestamp": at(-4), "properties": {"revenue": 25}},
        {"type": "page", "name": "Home", "messageId": "p-cy", "userId": "cy", "timestamp": at(-1)},
        {**ordered, "messageId": "o-dan", "userId": "dan", "timestamp": at(-200), "properties": {"revenue": 90}},
        {**viewed, "messageId": "v-dan-late", "userId": "dan", "timestamp": at(-300)},
        {**ordered, "messageId": "o-ann-1", "userId": "ann", "timestamp": at(-9), "properties": {"revenue": 40}},
    ]


class Deployment:
    """ingest, segmentation and funnel as processes on one bus, each with its own store."""

    def __init__(self, tmp_path: Path, bus_env: dict[str, str], stores: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = {name: {**bus_env, "DATA_DIR": str(tmp_path / name), "SEGMENTATION_REEVALUATE_SECONDS": "1",
                           f"{name.upper()}_DATABASE_URL": stores[name]} for name in ("ingest", *CONSUMERS)}
        self.ports = {name: free_port() for name in self.env}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, *names: str) -> None:
        for name in names:
            log = self.tmp_path / f"{name}.log"
            self.processes[name] = start_process(f"services.{name}", {**self.env[name], "PORT": str(self.ports[name])}, log)
        for name in names:
            wait_until_healthy(self.url(name), self.processes[name], self.tmp_path / f"{name}.log")

    def stop(self, *names: str) -> None:
        for name in names:
            stop_process(self.processes.pop(name))

    def replay(self, service: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The console script, as an operator runs it, with the service's own environment."""
        script = Path(sys.executable).parent / "funnelstream"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text", **(env or self.env.get(service, {}))}
        return subprocess.run([str(script), "replay", "--service", service], env=full_env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)


def answers(deployment: Deployment) -> dict[str, Any]:
    """What a client sees: profiles, segments with counts and members, funnel reports and places."""
    seg, fun = deployment.url("segmentation"), deployment.url("funnel")
    got: dict[str, Any] = {}
    for customer in CUSTOMERS:
        got[f"profile/{customer}"] = httpx.get(f"{seg}/api/customers/{customer}", headers=READER).json()
    got["segments"] = httpx.get(f"{seg}/api/segments", headers=READER).json()
    for key in ("pro-buyers", "lifecycle:new", "lifecycle:loyal", "lifecycle:churned"):
        got[f"members/{key}"] = httpx.get(f"{seg}/api/segments/{key}/members", headers=READER).json()
    for funnel in ("lifecycle", "view-to-buy"):
        got[f"report/{funnel}"] = httpx.get(f"{fun}/api/funnels/{funnel}/report", headers=READER,
                                            params={"from": at(-400)[:10], "to": at(1)[:10]}).json()
        for customer in CUSTOMERS:
            got[f"place/{funnel}/{customer}"] = httpx.get(f"{fun}/api/funnels/{funnel}/customers/{customer}",
                                                          headers=READER).json()
    got["funnels"] = httpx.get(f"{fun}/api/funnels", headers=READER).json()
    return {key: _without(value, PROCESSING_TIMES if key.startswith(("profile/", "members/")) else set())
            for key, value in got.items()}


# Segmentation stamps a membership's `since` with the time it processed the change, which the bus
# does not hold: after a replay it is the replay's time (README, replay). Everything else must match.
PROCESSING_TIMES = {"since"}


def _without(value: Any, names: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: round(v) if k == "recency_days" else _without(v, names)  # moves with the clock (0.001 a 1.4 min)
                for k, v in value.items() if k not in names}
    if isinstance(value, list):
        return [_without(v, names) for v in value]
    return value


def settled(deployment: Deployment, timeout: float = 60) -> dict[str, Any]:
    """The answers once they stop changing (consumers caught up, the scheduled pass run)."""
    deadline = time.monotonic() + timeout
    previous = answers(deployment)
    while time.monotonic() < deadline:
        time.sleep(2.5)  # more than a scheduled pass (1 s)
        current = answers(deployment)
        if current == previous and current["profile/ann"].get("value_tier"):
            return current
        previous = current
    changed = sorted(k for k in current if current[k] != previous.get(k))
    raise AssertionError(f"answers still changing after {timeout}s: {changed}; ann: {current['profile/ann']}")


@pytest.fixture(params=["embedded-sqlite", "embedded-postgresql", "kafka-sqlite"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool) -> Iterator[Deployment]:
    import asyncio

    bus, store = request.param.split("-")
    if bus == "kafka":
        broker = request.getfixturevalue("own_kafka_broker")  # a replay reads whole topics
        bus_env = {"BUS_BACKEND": "kafka", "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "BUS_PARTITIONS": "4",
                   "KAFKA_IDEMPOTENT_PRODUCER": str(broker.idempotent_producer).lower()}
    else:
        bus_env = {"BUS_BACKEND": "embedded", "BUS_PATH": str(tmp_path / "bus.db")}
    if store == "postgresql" and not pg_available:
        pytest.skip("PostgreSQL not reachable")
    names = ("ingest", *CONSUMERS)
    stores = ({n: asyncio.run(create_pg_database()) for n in names} if store == "postgresql"
              else {n: f"sqlite+aiosqlite:///{tmp_path / n / 'store.db'}" for n in names})
    made = Deployment(tmp_path, bus_env, stores)
    try:
        yield made
    finally:
        for process in made.processes.values():
            stop_process(process)
        if store == "postgresql":
            for url in stores.values():
                asyncio.run(drop_pg_database(url))


@pytest.mark.timeout(300)  # three processes, twice, and two replays: minutes on a busy 2-core machine
def test_a_replayed_service_answers_as_before(deployment: Deployment):
    deployment.start("ingest", *CONSUMERS)
    assert httpx.post(f"{deployment.url('segmentation')}/api/segments", json=SEGMENT, headers=ADMIN).status_code == 201
    assert httpx.post(f"{deployment.url('funnel')}/api/funnels", json=FUNNEL, headers=ADMIN).status_code == 201
    sent = httpx.post(f"{deployment.url('ingest')}/v1/batch", json={"batch": history()}, auth=WRITE).json()
    assert sent["accepted"] == len(history()) and sent["rejected"] == []
    before = settled(deployment)
    assert before["profile/ann"]["order_count"] == 2 and before["profile/bob"]["order_count"] == 1
    deployment.stop(*CONSUMERS)

    for service in CONSUMERS:
        result = deployment.replay(service)
        assert result.returncode == 0, result.stderr
        assert "replayed " in result.stderr and f"into {service}'s store" in result.stderr
    deployment.start(*CONSUMERS)

    after = settled(deployment)
    changed = {key: {"before": before.get(key), "after": after.get(key)}
               for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)}
    assert not changed, changed


class TestErrors:
    """One line on stderr, exit 2, nothing touched."""

    def run(self, tmp_path: Path, service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return Deployment(tmp_path, {}, {n: "" for n in ("ingest", *CONSUMERS)}).replay(
            service, {"DATA_DIR": str(tmp_path), **env})

    def test_unknown_service(self, tmp_path: Path):
        result = self.run(tmp_path, "billing", {})
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "funnelstream replay: error: unknown service 'billing'; replayable: segmentation, funnel, recommendation")

    def test_a_service_whose_store_is_not_built_from_the_bus(self, tmp_path: Path):
        result = self.run(tmp_path, "ingest", {})
        assert result.returncode == 2 and result.stderr.startswith("funnelstream replay: error: cannot replay ingest: ")
        assert len(result.stderr.strip().splitlines()) == 1

    def test_store_unreachable(self, tmp_path: Path):
        closed = free_port()
        result = self.run(tmp_path, "segmentation", {
            "SEGMENTATION_DATABASE_URL": f"postgresql+asyncpg://postgres:secret@127.0.0.1:{closed}/segmentation"})
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("funnelstream replay: error: store unreachable (postgresql+asyncpg://***@127.0.0.1:")
        assert "secret" not in line

    def test_the_service_still_running(self, tmp_path: Path):
        env = {"BUS_PATH": str(tmp_path / "bus.db"), "DATA_DIR": str(tmp_path / "segmentation")}
        log = tmp_path / "segmentation.log"
        port = free_port()
        process = start_process("services.segmentation", {**env, "PORT": str(port)}, log)
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", process, log)
            result = self.run(tmp_path, "segmentation", env)
            assert result.returncode == 2, result.stderr
            assert "still holds some of its partitions: stop every segmentation process first" in result.stderr
            assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200
        finally:
            stop_process(process)
