"""The segmentation service's memory after it has consumed 1M events, and its consume rate.

The service runs as its own process (`python -m services.segmentation`, SQLite store, embedded
bus), with a custom segment defined so every event is also evaluated against a rule. The events
are the UCI Online Retail rows as ingest publishes them on interactions.v1 (each row twice under
another id to reach 1M). Ratio: resident memory after the load against the same process idle.
BENCH_RSS_EVENTS sets the count (default 1,000,000).
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import datetime
from itertools import count
from pathlib import Path

import httpx

from bench.retail import invoice_time, rows
from shared.bus.embedded import EmbeddedBus
from shared.events import INTERACTIONS, Interaction, encode
from tests.helpers import ADMIN, free_port, start_process, stop_process, wait_until_healthy

EVENTS = int(os.environ.get("BENCH_RSS_EVENTS", "1000000"))
BATCH = 5000
RULE = {"all": [{"field": "order_count", "op": "gte", "value": 2},
                {"event": "Order Completed", "op": "gte", "value": 3, "within_days": 90}]}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM"))}


def interactions(n: int) -> list[Interaction]:
    events: list[Interaction] = []
    ids = count()
    while len(events) < n:
        copy = len(events) // 541_909
        for row in rows():
            if len(events) >= n:
                break
            at = datetime.fromisoformat(invoice_time(row))
            customer = f"{row['CustomerID']}-{copy}" if row["CustomerID"] else f"anon-{row['InvoiceNo']}-{copy}"
            events.append(Interaction(
                event_id=f"rss-{next(ids)}", customer_id=customer, user_id=customer if row["CustomerID"] else None,
                anonymous_id=None if row["CustomerID"] else customer, type="track",
                name="Order Completed" if not row["InvoiceNo"].startswith("C") else "Order Refunded",
                properties={"order_id": row["InvoiceNo"], "sku": row["StockCode"], "quantity": int(row["Quantity"]),
                            "revenue": round(int(row["Quantity"]) * float(row["UnitPrice"]), 2)},
                occurred_at=at, received_at=at))
    return events


async def load(bus_path: Path, events: list[Interaction], url: str) -> float:
    """Publish every event, then wait until the service has consumed them; returns events/s."""
    bus = EmbeddedBus(bus_path)
    await bus.start()
    started = time.perf_counter()
    try:
        for start in range(0, len(events), BATCH):
            await bus.publish([encode(e) for e in events[start:start + BATCH]])
        reported = started
        while True:
            behind = sum((await bus.lag("segmentation", [INTERACTIONS])).values())
            if not behind:
                return len(events) / (time.perf_counter() - started)
            if time.perf_counter() - reported > 15:
                reported = time.perf_counter()
                done = len(events) - behind
                print(f"   consumed {done:,} / {len(events):,} ({done / (reported - started):,.0f} events/s)", flush=True)
            await asyncio.sleep(0.5)
    finally:
        await bus.stop()


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="fs-bench-rss-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "segmentation.log"
    process = start_process("services.segmentation", {"DATA_DIR": str(data_dir), "PORT": str(port),
                                                      "SEGMENTATION_REEVALUATE_SECONDS": "86400"}, log)
    try:
        wait_until_healthy(url, process, log)
        response = httpx.post(f"{url}/api/segments", json={"key": "repeat-buyers", "rule": RULE}, headers=ADMIN)
        assert response.status_code == 201, response.text
        idle = memory_kib(process.pid)
        print(f"   preparing {EVENTS:,} events from the UCI Online Retail data ...", flush=True)
        events = interactions(EVENTS)
        rate = asyncio.run(load(data_dir / "bus.db", events, url))
        after = memory_kib(process.pid)
        members = httpx.get(f"{url}/api/segments/repeat-buyers", headers=ADMIN).json()["member_count"]
    finally:
        stop_process(process)
    print(f"segmentation service after {EVENTS:,} events: RSS {after['VmRSS'] / 1024:.0f} MiB "
          f"(peak {after['VmHWM'] / 1024:.0f} MiB), idle {idle['VmRSS'] / 1024:.0f} MiB, ratio {after['VmRSS'] / idle['VmRSS']:.2f}; "
          f"consumed {rate:,.0f} events/s with one custom segment ({members:,} members)")


if __name__ == "__main__":
    main()
