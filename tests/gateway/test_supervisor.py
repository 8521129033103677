"""`make run`'s services each in a process of their own (GATEWAY_PROCESSES): events still reach
every service, a service killed mid-run is started again and loses nothing, the gateway's /metrics
is one valid page for all of them, and nothing outlives the gateway, even killed by SIGKILL."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.settings import SERVICES
from tests.helpers import READER, free_port, start_process, stop_process, wait_until_healthy

WRITE = ("dev-write-key", "")


class Run:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "gateway.log"
        self.data = tmp_path / "data"
        self.process = start_process("services.gateway", {
            "PORT": str(self.port), "DATA_DIR": str(self.data), "GATEWAY_PROCESSES": "true",
            "API_KEYS": "", "WRITE_KEYS": ""}, self.log)
        wait_until_healthy(self.url, self.process, self.log, timeout=120)

    def children(self) -> dict[str, int]:
        """service -> pid of the gateway's child processes."""
        found = {}
        tasks = Path(f"/proc/{self.process.pid}/task").glob("*/children")  # a restarted one: the watcher thread's
        for child in (pid for task in tasks for pid in task.read_text().split()):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            found[argv[2].decode().removeprefix("services.")] = int(child)
        return found

    def send(self, customer: str, *events: str) -> None:
        batch = [{"type": "track", "event": event, "userId": customer, "messageId": f"{customer}-{i}",
                  "timestamp": "2026-11-01T10:00:00Z", "properties": {"revenue": 10} if event == "Order Completed" else {}}
                 for i, event in enumerate(events)]
        response = httpx.post(f"{self.url}/v1/batch", json={"batch": batch}, auth=WRITE, timeout=30)
        assert response.status_code == 200, response.text

    def orders(self, customer: str) -> int | None:
        response = httpx.get(f"{self.url}/api/customers/{customer}", headers=READER, timeout=30)
        return response.json()["order_count"] if response.status_code == 200 else None

    def wait_for_orders(self, customer: str, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.orders(customer) != count:
            assert time.monotonic() < deadline, f"{customer}'s profile never showed {count} orders: {self.orders(customer)}"
            time.sleep(0.2)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    started = Run(tmp_path)
    try:
        yield started
    finally:
        stop_process(started.process)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_every_service_runs_in_a_process_of_its_own_and_events_reach_them(run: Run) -> None:
    assert sorted(run.children()) == sorted(SERVICES)
    run.send("ann", "Signed Up", "Order Completed")
    run.wait_for_orders("ann", 1)
    assert "each in its own process" in run.log.read_text()


def test_a_service_killed_mid_run_is_started_again_and_loses_nothing(run: Run) -> None:
    run.send("ann", "Signed Up", "Order Completed")
    run.wait_for_orders("ann", 1)
    killed = run.children()["segmentation"]
    os.kill(killed, signal.SIGKILL)
    run.send("bob", "Order Completed")  # accepted by ingest while segmentation is down
    run.wait_for_orders("bob", 1)
    assert run.children()["segmentation"] != killed
    assert run.orders("ann") == 1  # nothing counted twice by the new process
    assert "the segmentation service exited with -9; starting it again" in run.log.read_text()


def test_metrics_are_one_valid_page_with_every_services_numbers(run: Run) -> None:
    run.send("ann", "Order Completed")
    run.wait_for_orders("ann", 1)
    text = httpx.get(f"{run.url}/metrics", timeout=30).text
    families = {family.name: family for family in text_string_to_metric_families(text)}  # raises if invalid
    lag = families["funnelstream_bus_consumer_lag"]
    assert {"segmentation", "funnel", "followup", "recommendation"} <= {s.labels["service"] for s in lag.samples}
    assert text.count("# TYPE process_resident_memory_bytes ") == 1


def test_nothing_outlives_the_gateway_killed_by_sigkill(run: Run) -> None:
    children = run.children()
    run.process.kill()
    run.process.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children.values()):
        assert time.monotonic() < deadline, {name: pid for name, pid in children.items() if alive(pid)}
        time.sleep(0.2)


def test_a_service_that_dies_at_every_start_is_started_again_after_growing_pauses(run: Run) -> None:
    """A crash loop (here a store file that is not a database) is retried after 2 s, then 4 s, ...
    instead of once a second for ever; once the cause is gone the service comes back."""
    store = run.data / "recommendation.db"
    for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        path.unlink(missing_ok=True)
    store.write_bytes(b"not a database " * 512)
    os.kill(run.children()["recommendation"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "starting it again in 4 s" not in run.log.read_text():
        assert time.monotonic() < deadline, run.log.read_text()[-3000:]
        time.sleep(0.2)
    restarts = [line.split("starting it again")[1].split(" (log")[0]
                for line in run.log.read_text().splitlines() if "the recommendation service exited" in line]
    assert restarts[:3] == ["", " in 2 s", " in 4 s"], restarts
    store.unlink()  # the cause gone: the next start (after 4 s) makes a fresh store and stays up
    deadline = time.monotonic() + 60
    while httpx.get(f"{run.url}/api/recommendations/customers/ann", headers=READER, timeout=30).status_code >= 500:
        assert time.monotonic() < deadline, run.log.read_text()[-3000:]
        time.sleep(0.5)
