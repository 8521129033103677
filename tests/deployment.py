"""The scale layout on one machine, for tests and benches: each service its own process on its own
PostgreSQL database, the gateway another proxying to them over HTTP (docker-compose.yml's wiring,
on loopback ports). The bus is the caller's (`bus_env`: embedded or a Kafka-wire broker)."""
from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import free_port, start_process, stop_process, wait_until_healthy

SERVICES = ("ingest", "segmentation", "funnel", "followup", "recommendation")


@dataclass
class Deployment:
    url: str = ""  # the gateway's
    urls: dict[str, str] = field(default_factory=dict)  # service -> its base URL
    databases: dict[str, str] = field(default_factory=dict)  # service -> its SQLAlchemy URL
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # service or "gateway"
    logs: dict[str, Path] = field(default_factory=dict)


@contextmanager
def separate_processes(bus_env: dict[str, str], directory: Path, env: dict[str, str] | None = None,
                       timeout: float = 60) -> Iterator[Deployment]:
    """Every service started, healthy, then the gateway; on exit (a failure and Ctrl-C included)
    every process is stopped and every database dropped."""
    deployment = Deployment()
    try:
        for name in SERVICES:
            deployment.databases[name] = asyncio.run(create_pg_database())
        for name in SERVICES:
            port = free_port()
            deployment.urls[name] = f"http://127.0.0.1:{port}"
            _start(deployment, name, directory, {
                **bus_env, **(env or {}), "PORT": str(port), "DATA_DIR": str(directory / name),
                f"{name.upper()}_DATABASE_URL": deployment.databases[name]})
        for name in SERVICES:  # all starting at once: the slowest sets the pace
            wait_until_healthy(deployment.urls[name], deployment.processes[name], deployment.logs[name], timeout)
        port = free_port()
        deployment.url = f"http://127.0.0.1:{port}"
        _start(deployment, "gateway", directory, {
            **bus_env, **(env or {}), "PORT": str(port), "DATA_DIR": str(directory / "gateway"),
            **{f"GATEWAY_{name.upper()}_URL": url for name, url in deployment.urls.items()}})
        wait_until_healthy(deployment.url, deployment.processes["gateway"], deployment.logs["gateway"], timeout)
        yield deployment
    finally:
        for process in deployment.processes.values():  # all stopping at once
            process.terminate()
        for process in deployment.processes.values():
            stop_process(process)
        for database in deployment.databases.values():
            asyncio.run(drop_pg_database(database))


def _start(deployment: Deployment, name: str, directory: Path, env: dict[str, str]) -> None:
    deployment.logs[name] = directory / f"{name}.log"
    deployment.processes[name] = start_process(f"services.{name}", env, deployment.logs[name])
