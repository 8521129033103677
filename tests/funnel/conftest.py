"""Funnels as their users meet them: the whole gateway in-process, a fresh DATA_DIR per test, one
clock for ingest, segmentation and funnel, fixed and moved by the test.

Modules that depend on SQL override `funnel_db_url` with `store_url`, so they run on SQLite and
on PostgreSQL.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.funnel.app import MIGRATIONS
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.clock import FixedClock
from shared.store import Store
from tests.funnel.support import Funnels


@pytest.fixture
def funnel_db_url() -> str | None:
    """The funnel store: None is the default, SQLite in DATA_DIR."""
    return None


@pytest.fixture
def store_url_service() -> str:
    """`store_url` is a migrated funnel store."""
    return "funnel"


@pytest.fixture
def gateway_app(migrated_data_dir: Path, funnel_db_url: str | None, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    if funnel_db_url:
        monkeypatch.setenv("FUNNEL_DATABASE_URL", funnel_db_url)
    # Scheduled passes run only when a test calls them (time is the test's to move).
    monkeypatch.setenv("SEGMENTATION_REEVALUATE_SECONDS", "86400")
    monkeypatch.setenv("FUNNEL_CLEANUP_SECONDS", "86400")
    return create_app(GatewaySettings())






@pytest.fixture
def funnels(gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> Funnels:
    return Funnels(gateway_app, client, clock)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The funnel's store alone, migrated, on SQLite and PostgreSQL (tests driving its handlers
    directly; a module may override it with one holding definitions)."""
    store = Store(store_url)
    await store.migrate(MIGRATIONS)
    yield store
    await store.dispose()
