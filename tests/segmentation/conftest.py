"""Segmentation as its users meet it: the whole gateway in-process, a fresh DATA_DIR per test,
the service clock fixed and moved by the test.

Modules that depend on SQL override `segmentation_db_url` with `store_url`, so they run on
SQLite and on PostgreSQL.
"""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.clock import FixedClock
from tests.segmentation.support import Segmentation


@pytest.fixture
def segmentation_db_url() -> str | None:
    """The segmentation store: None is the default, SQLite in DATA_DIR."""
    return None


@pytest.fixture
def store_url_service() -> str:
    """`store_url` is a migrated segmentation store."""
    return "segmentation"


@pytest.fixture
def gateway_app(migrated_data_dir: Path, segmentation_db_url: str | None, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    if segmentation_db_url:
        monkeypatch.setenv("SEGMENTATION_DATABASE_URL", segmentation_db_url)
    # The scheduled pass runs only when a test calls it (time is the test's to move).
    monkeypatch.setenv("SEGMENTATION_REEVALUATE_SECONDS", "86400")
    return create_app(GatewaySettings())






@pytest.fixture
def seg(gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> Segmentation:
    return Segmentation(gateway_app, client, clock)
