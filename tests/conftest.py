"""Fixtures every suite shares: real stores (SQLite files, fresh PostgreSQL databases), and the
in-process gateway's clock and client."""
from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from shared.clock import FixedClock
from tests.helpers import fix_clocks, running
from tests.segmentation.support import T0
from tests.store_templates import SERVICES, StoreTemplates

PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_admin() -> asyncpg.Connection:
    return await asyncpg.connect(PG_ADMIN_DSN, timeout=3)


@pytest.fixture(autouse=True)
def no_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's per-key rate limits are off in tests (reading a shop's customers back to back
    through the ASGI app outruns 100 requests a second, and a 429 would fail a test about something
    else); tests/gateway/test_rate_limits.py sets its own and checks them. Processes a test starts
    inherit this."""
    for kind in ("API", "INGEST", "ANONYMOUS"):
        monkeypatch.setenv(f"GATEWAY_RATE_LIMIT_{kind}", "0")


@pytest.fixture(scope="session")
def pg_available() -> bool:
    import asyncio

    async def probe() -> bool:
        try:
            conn = await _pg_admin()
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            return False
        await conn.close()
        return True

    if asyncio.run(probe()):
        return True
    # A run without PostgreSQL would pass while testing half the stores: on CI that is a failure.
    if os.environ.get("TEST_POSTGRES") == "skip":
        return False
    pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN} (TEST_POSTGRES_DSN): start it, or run "
                "`TEST_POSTGRES=skip make test` to skip its half on a laptop", pytrace=False)


async def create_pg_database(name: str | None = None) -> str:
    """A new empty database; returns its SQLAlchemy async URL."""
    name = name or f"fs_test_{uuid.uuid4().hex[:12]}"
    await _pg_execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


async def _pg_execute(statement: str) -> None:
    conn = await _pg_admin()
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await _pg_admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def store_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreTemplates]:
    """Each service's store migrated once per session, copied for each test (tests/store_templates.py)."""
    templates = StoreTemplates(tmp_path_factory.mktemp("store-templates"), create_pg_database, _pg_execute)
    yield templates
    templates.close()


@pytest.fixture
def store_url_service() -> str | None:
    """Whose migrations `store_url`'s stores come with, already applied: a suite that runs one
    service names it (its tests start on a migrated store, cheaply copied). None: an empty store."""
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool, store_url_service: str | None,
                    store_templates: StoreTemplates) -> AsyncIterator[str]:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        if store_url_service:
            await store_templates.copy_sqlite(store_url_service, tmp_path / "store.db")
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN}")
    url = await (store_templates.clone_pg(store_url_service) if store_url_service else create_pg_database())
    try:
        yield url
    finally:
        store_templates.drop(url)  # on a thread, while the next tests run


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[object]:
    """A Kafka-wire broker for the session: Tansu on a free loopback port, or KAFKA_BOOTSTRAP_SERVERS."""
    from tests.bus.tansu import start_broker

    with start_broker() as broker:
        yield broker


@pytest.fixture
def own_kafka_broker() -> Iterator[object]:
    """A broker for this test alone, for services run as processes: their consumer groups have fixed
    names, and on a shared broker a member an earlier test's process left behind can hold a group
    in rebalance for minutes (seen on Tansu), or a replay reads the earlier tests' records."""
    from tests.bus.tansu import start_broker

    with start_broker() as broker:
        yield broker


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh DATA_DIR with no keys configured (so loopback dev keys apply)."""
    for var in ("API_KEYS", "WRITE_KEYS", "BUS_BACKEND", "HOST", "PORT", "BUS_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    yield tmp_path


@pytest.fixture
async def migrated_data_dir(data_dir: Path, store_templates: StoreTemplates) -> Path:
    """`data_dir` holding every service's SQLite store already migrated (copies, not migrations
    run again), for a gateway started with its services in-process."""
    for service in SERVICES:
        await store_templates.copy_sqlite(service, data_dir / f"{service}.db")
    return data_dir


@pytest.fixture
async def empty_store_url(store_url: str, tmp_path: Path, store_templates: StoreTemplates) -> AsyncIterator[str]:
    """Another store of the same kind as `store_url`, empty (to rebuild a service into)."""
    if store_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'rebuilt' / 'store.db'}"
        return
    url = await create_pg_database()
    try:
        yield url
    finally:
        store_templates.drop(url)  # on a thread, while the next tests run


# The gateway with every service in-process and one clock the test moves: suites that drive the
# services define `gateway_app` (their settings) and get these (tests/ingest keeps its own client).
@pytest.fixture
def clock(gateway_app: FastAPI) -> FixedClock:
    """One clock for every service: receivedAt, days since an order, open windows, due times."""
    fixed = FixedClock(T0)
    fix_clocks(gateway_app, fixed)
    return fixed


@pytest.fixture
async def client(gateway_app: FastAPI, clock: FixedClock) -> AsyncIterator[httpx.AsyncClient]:
    async with running(gateway_app) as client:
        yield client
