"""Recommendations as their users meet them: the whole gateway in-process (ingest stitches and
erases, the recommendation service consumes), a fresh DATA_DIR per test, its store on SQLite and
on PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.clock import FixedClock
from tests.recommendation.support import Shop


@pytest.fixture
def store_url_service() -> str:
    """`store_url` is a migrated recommendation store."""
    return "recommendation"


@pytest.fixture
def gateway_app(migrated_data_dir: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv("RECOMMENDATION_DATABASE_URL", store_url)
    monkeypatch.setenv("SEGMENTATION_REEVALUATE_SECONDS", "86400")
    monkeypatch.setenv("FUNNEL_CLEANUP_SECONDS", "86400")
    return create_app(GatewaySettings())


@pytest.fixture
def shop(gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> Shop:
    return Shop(gateway_app, client, clock)
