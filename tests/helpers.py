"""Test helpers: an app with its lifespan running, reached through real HTTP (ASGI or uvicorn)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from shared import runner

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"Authorization": "Bearer dev-admin-key"}
READER = {"Authorization": "Bearer dev-reader-key"}


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (migrations, bus, consumers) and an HTTP client on it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The contract's error shape: {"error": {"code", "message", "details"}} with this status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m module` as its own process, output to `log`."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text", **env}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    problem = runner.wait_until_healthy(url, process, timeout)
    assert problem is None, f"{url} {problem}:\n{log.read_text()[-3000:]}"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def eventually(check, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Await `check()` until it returns a truthy value (asynchronous effects: pipelines, consumers).
    The one polling helper of the async tests; `what` names the awaited effect in the failure."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            assert result, f"{what} not met within {timeout}s (last value: {result!r})"
            return result
        await asyncio.sleep(interval)


async def read_topic(bus: Any, topic: str) -> list[Any]:
    """Every record on `topic` so far, read by a consumer group of the caller's own (no other
    group's offsets move)."""
    import uuid

    consumer = bus.consumer(f"test-reader-{uuid.uuid4().hex[:8]}", [topic])
    await consumer.start()
    try:
        records: list[Any] = []
        while batch := await consumer.poll(timeout=0.2):
            records += batch
    finally:
        await consumer.stop()
    return records


async def rewind(bus_path: Path, group: str, topics: list[str]) -> None:
    """The group reads its topics again from offset 0 (Kafka's --reset-offsets --to-earliest)."""
    from shared.bus.embedded import EmbeddedBus

    bus = EmbeddedBus(bus_path)
    await bus.start()
    consumer = bus.consumer(group, topics)
    await consumer.start()
    await consumer.commit({tp: 0 for tp in consumer.assignment()})
    await consumer.stop()
    await bus.stop()


def fix_clocks(gateway_app: Any, clock: Any) -> None:
    """One clock for every service the gateway runs in-process (tests move it to make time pass)."""
    for upstream in gateway_app.state.upstreams.values():
        upstream.app.state.runtime.clock = clock
