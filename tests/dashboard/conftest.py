"""A live gateway (its own process, dev keys on loopback) and one headless Chromium per module.

Chromium is Debian's package (`.ci/run` installs it when missing); Playwright from PyPI drives it
(never `playwright install`). Screenshots go to DASHBOARD_SCREENSHOTS, else a temporary folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT, free_port, stop_process, wait_until_healthy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Settings of an outer environment that would replace the loopback dev keys or the embedded bus.
DROPPED = ("API_KEYS", "WRITE_KEYS", "BUS_BACKEND", "HOST", "BUS_PATH", "DATABASE_URL", "PORT", "DATA_DIR")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class LiveGateway:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    shots: Path
    console_errors: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, key: str = "dev-admin-key", **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs)

    def send(self, batch: list[dict[str, Any]]) -> None:
        response = httpx.post(f"{self.url}/v1/batch", json={"batch": batch}, auth=("dev-write-key", ""), timeout=30)
        assert response.status_code == 200 and not response.json()["rejected"], response.text


def start_gateway(tmp: Path) -> LiveGateway:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(PYTHONPATH=str(ROOT), LOG_FORMAT="text", PORT=str(port), DATA_DIR=str(tmp / "data"))
    log = tmp / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process, log)
    shots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tempfile.mkdtemp(prefix="dashboard-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    return LiveGateway(url, process, log, shots)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("dashboard"))
    try:
        yield gateway
    finally:
        stop_process(gateway.process)


def open_page(browser: Any, live: LiveGateway, viewport: dict[str, int] = DESKTOP) -> tuple[Any, Any, list[str]]:
    """A fresh browser session (no cookie) with its console errors collected."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors
