"""The gateway with every service in-process, on a fresh DATA_DIR, reached through its ASGI app."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.helpers import running


@pytest.fixture
async def gateway(data_dir: Path):
    async with running(create_app(GatewaySettings())) as client:
        yield client
