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

PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_admin() -> asyncpg.Connection:
    return await asyncpg.connect(PG_ADMIN_DSN, timeout=3)


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

    return asyncio.run(probe())


async def create_pg_database() -> str:
    """A new empty database; returns its SQLAlchemy async URL."""
    name = f"fs_test_{uuid.uuid4().hex[:12]}"
    conn = await _pg_admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await _pg_admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool) -> AsyncIterator[str]:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN}")
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[object]:
    """A Kafka-wire broker for the session: Tansu on a free loopback port, or KAFKA_BOOTSTRAP_SERVERS."""
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
async def empty_store_url(store_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """Another store of the same kind as `store_url`, empty (to rebuild a service into)."""
    if store_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'rebuilt' / 'store.db'}"
        return
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


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
