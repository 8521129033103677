"""Ingest as SDKs and operators meet it: the whole gateway in-process, a fresh DATA_DIR per test.

Modules whose behaviour depends on SQL (dedupe, stitching, erasure, paging) override
`ingest_db_url` with `store_url`, so they run on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.bus.embedded import EmbeddedBus
from shared.service import Runtime
from tests.helpers import running
from tests.ingest.support import BusReader


@pytest.fixture
def ingest_db_url() -> str | None:
    """The ingest store: None is the default, SQLite in DATA_DIR."""
    return None


@pytest.fixture
def store_url_service() -> str:
    """`store_url` is a migrated ingest store."""
    return "ingest"


@pytest.fixture
def gateway_app(migrated_data_dir: Path, ingest_db_url: str | None, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    if ingest_db_url:
        monkeypatch.setenv("INGEST_DATABASE_URL", ingest_db_url)
    return create_app(GatewaySettings())


@pytest.fixture
async def client(gateway_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(gateway_app) as client:
        yield client


@pytest.fixture
def ingest(gateway_app: FastAPI) -> Runtime:
    """The in-process ingest service's runtime (its clock can be replaced by a FixedClock)."""
    ingest_app = gateway_app.state.upstreams["ingest"].app
    runtime: Runtime = ingest_app.state.runtime
    return runtime


@pytest.fixture
async def bus(data_dir: Path, client: httpx.AsyncClient) -> AsyncIterator[BusReader]:
    """The gateway's embedded bus read by a second client, as another process would."""
    embedded = EmbeddedBus(data_dir / "bus.db")
    await embedded.start()
    reader = BusReader(embedded, f"ingest-test-{uuid.uuid4().hex[:8]}")
    yield reader
    await reader.stop()
    await embedded.stop()
