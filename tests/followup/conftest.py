"""Follow-ups as their users meet them: the whole gateway in-process, a fresh DATA_DIR per test,
one clock for every service, fixed and moved by the test.

The periodic scheduler is kept out of the way (FOLLOWUP_SCHEDULER_SECONDS=86400) and the
periodic webhook sender is turned off, so passes happen when a test runs them. Modules that
depend on SQL override `followup_db_url` with `store_url` (SQLite and PostgreSQL); modules that
need settings override `followup_env`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import services.followup.app as followup_app
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.clock import FixedClock
from tests.followup.support import SECRET, Followups, Receiver
from tests.helpers import fix_clocks


@pytest.fixture
def followup_db_url() -> str | None:
    """The follow-up store: None is the default, SQLite in DATA_DIR."""
    return None


@pytest.fixture
def followup_env() -> dict[str, str]:
    """FOLLOWUP_* settings a module needs (webhook URLs, grace)."""
    return {}


@pytest.fixture
def background_webhooks() -> bool:
    """Whether the service's own once-a-second webhook sender runs (else tests send)."""
    return False


@pytest.fixture
def store_url_service() -> str:
    """`store_url` is a migrated follow-up store."""
    return "followup"


@pytest.fixture
def gateway_app(migrated_data_dir: Path, followup_db_url: str | None, followup_env: dict[str, str], background_webhooks: bool,
                monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    if followup_db_url:
        monkeypatch.setenv("FOLLOWUP_DATABASE_URL", followup_db_url)
    monkeypatch.setenv("FOLLOWUP_SCHEDULER_SECONDS", "86400")
    monkeypatch.setenv("SEGMENTATION_REEVALUATE_SECONDS", "86400")
    monkeypatch.setenv("FUNNEL_CLEANUP_SECONDS", "86400")
    for name, value in followup_env.items():
        monkeypatch.setenv(name, value)
    if not background_webhooks:
        async def no_sending(*_: object) -> int:
            return 0

        # The periodic job looks the function up when it runs; tests call the real one.
        monkeypatch.setattr(followup_app, "send_webhooks", no_sending)
    return create_app(GatewaySettings())






@pytest.fixture
def fu(gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> Followups:
    return Followups(gateway_app, client, clock)


@pytest.fixture
async def webhook_client() -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP client the tests' webhook passes POST with (the service's own is not running)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver listening on 127.0.0.1 for the whole test."""
    started = Receiver().start()
    yield started
    started.stop()


def webhook_env(*urls: str) -> dict[str, str]:
    return {"FOLLOWUP_WEBHOOK_URLS": ",".join(urls), "FOLLOWUP_WEBHOOK_SECRET": SECRET}


def new_gateway(clock: FixedClock) -> FastAPI:
    """Another gateway on the same DATA_DIR and stores (the environment the fixtures set): the
    process started again."""
    app = create_app(GatewaySettings())
    fix_clocks(app, clock)
    return app
