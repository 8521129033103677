"""`POST /api/segments:preview` over 100k customers against DuckDB counting the same rule over the
same data in the same run (answers checked equal).

The customers are the real UCI Online Retail customers (country, invoices as orders), replicated
to 100k with jittered amounts and dates. Our side is the whole request: HTTP through the ASGI app,
reading the store, evaluating; DuckDB gets the data already in its own typed, columnar tables
(its best case). The evaluation alone, over facts already read, is printed too.
"""
from __future__ import annotations

import asyncio
import csv
import os
import random
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import duckdb
import httpx
import orjson

from bench.retail import invoice_time, rows
from tests.helpers import READER

CUSTOMERS = 100_000
RULE = {"all": [
    {"field": "traits.country", "op": "in", "value": ["United Kingdom", "Germany", "France"]},
    {"field": "revenue", "op": "gt", "value": 1000},
    {"event": "Order Completed", "where": {"field": "revenue", "op": "gte", "value": 200},
     "op": "gte", "value": 2, "within_days": 180},
]}
DUCKDB_SQL = """
SELECT count(*) FROM profiles p
WHERE country IN ('United Kingdom', 'Germany', 'France') AND revenue > 1000
  AND (SELECT count(*) FROM events e WHERE e.customer_id = p.customer_id AND e.name = 'Order Completed'
       AND e.ts > ? AND e.revenue >= 200) >= 2
"""


def retail_customers() -> tuple[dict[str, str], dict[str, list[tuple[datetime, float]]]]:
    """Each real customer's country and orders (invoice time, invoice total)."""
    country: dict[str, str] = {}
    totals: dict[tuple[str, str], float] = defaultdict(float)
    times: dict[tuple[str, str], datetime] = {}
    for row in rows():
        if not row["CustomerID"] or row["InvoiceNo"].startswith("C"):
            continue
        key = (row["CustomerID"], row["InvoiceNo"])
        country[row["CustomerID"]] = row["Country"]
        totals[key] += int(row["Quantity"]) * float(row["UnitPrice"])
        times[key] = datetime.fromisoformat(invoice_time(row))
    orders: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for (customer, invoice), total in totals.items():
        orders[customer].append((times[(customer, invoice)], round(total, 2)))
    return country, orders


def population(n: int) -> tuple[datetime, list[dict[str, Any]], list[dict[str, Any]]]:
    """(now, profile rows, event rows) for n customers."""
    country, orders = retail_customers()
    real = sorted(country)
    rng = random.Random(11)
    now = max(at for o in orders.values() for at, _ in o) + timedelta(days=1)
    profiles, events = [], []
    for i in range(n):
        source = real[i % len(real)]
        shift = timedelta(days=rng.uniform(0, 60))
        mine = [(at - shift, round(total * rng.uniform(0.9, 1.1), 2)) for at, total in orders[source]]
        customer = f"c{i}"
        for j, (at, total) in enumerate(mine):
            events.append({"event_id": f"{customer}-{j}", "customer_id": customer, "name": "Order Completed",
                           "at": at, "properties": orjson.dumps({"revenue": total})})
        times = [at for at, _ in mine]
        profiles.append({"customer_id": customer, "traits": orjson.dumps({"country": country[source]}),
                         "traits_at": b"{}", "first_seen": min(times), "last_seen": max(times),
                         "event_count": len(mine), "order_count": len(mine),
                         "revenue": round(sum(t for _, t in mine), 2), "last_order_at": max(times)})
    return now, profiles, events


async def ours(now: datetime, profiles: list[dict[str, Any]], events: list[dict[str, Any]]
               ) -> tuple[int, float, float, float]:
    """(count, best request seconds, best evaluation-only seconds, first request seconds) on a real
    segmentation store. The first request builds the facts previews keep in memory; the next
    ones find nothing changed (facts_index.py)."""
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="fs-bench-preview-")
    from sqlalchemy import insert

    from services.segmentation.app import create_app
    from services.segmentation.facts import load_facts
    from services.segmentation.rules import parse
    from services.segmentation.store import customer_events
    from services.segmentation.store import profiles as profiles_table
    from shared.clock import FixedClock
    from shared.rules import evaluate

    app = create_app()
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        runtime.clock = FixedClock(now)
        async with runtime.store.transaction() as session:
            for start in range(0, len(profiles), 20_000):
                await session.execute(insert(profiles_table), profiles[start:start + 20_000])
            for start in range(0, len(events), 20_000):
                await session.execute(insert(customer_events), events[start:start + 20_000])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            request_s, count = [], -1
            for _ in range(3):
                started = time.perf_counter()
                response = await client.post("/api/segments:preview", json={"rule": RULE}, headers=READER)
                request_s.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                count = response.json()["count"]
        rule = parse(RULE)
        async with runtime.store.read() as session:
            facts = await load_facts(session, [rule], now, None)
        evaluate_s = []
        for _ in range(3):
            started = time.perf_counter()
            assert int(evaluate(rule, facts).sum()) == count
            evaluate_s.append(time.perf_counter() - started)
    return count, min(request_s), min(evaluate_s), request_s[0]


def duckdb_count(now: datetime, profiles: list[dict[str, Any]], events: list[dict[str, Any]]) -> tuple[int, float]:
    con = duckdb.connect()
    folder = tempfile.mkdtemp(prefix="fs-bench-duckdb-")
    with open(f"{folder}/profiles.csv", "w", newline="") as f:
        csv.writer(f).writerows((p["customer_id"], orjson.loads(p["traits"])["country"], p["revenue"]) for p in profiles)
    with open(f"{folder}/events.csv", "w", newline="") as f:
        csv.writer(f).writerows((e["customer_id"], e["name"], e["at"].isoformat(), orjson.loads(e["properties"])["revenue"])
                                for e in events)
    con.execute(f"CREATE TABLE profiles AS SELECT * FROM read_csv('{folder}/profiles.csv', header=false, "
                "columns={'customer_id': 'VARCHAR', 'country': 'VARCHAR', 'revenue': 'DOUBLE'})")
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_csv('{folder}/events.csv', header=false, "
                "columns={'customer_id': 'VARCHAR', 'name': 'VARCHAR', 'ts': 'TIMESTAMPTZ', 'revenue': 'DOUBLE'})")
    since = now - timedelta(days=180)
    best, count = float("inf"), -1
    for _ in range(3):
        started = time.perf_counter()
        row = con.execute(DUCKDB_SQL, [since]).fetchone()
        best = min(best, time.perf_counter() - started)
        assert row is not None
        count = int(row[0])
    return count, best


def main() -> None:
    print(f"   building {CUSTOMERS:,} customers from the UCI Online Retail data ...", flush=True)
    now, profiles, events = population(CUSTOMERS)
    print(f"   {len(events):,} order events; loading DuckDB and our store ...", flush=True)
    theirs, duck_s = duckdb_count(now, profiles, events)
    count, request_s, evaluate_s, first_s = asyncio.run(ours(now, profiles, events))
    assert count == theirs, f"preview counts {count}, DuckDB {theirs}"
    print(f"segment preview over {CUSTOMERS:,} customers ({count:,} match, same count as DuckDB): "
          f"request {request_s * 1000:.0f} ms, DuckDB {duck_s * 1000:.0f} ms, ratio {duck_s / request_s:.2f} "
          f"(>1 = faster than DuckDB); evaluation alone over facts already read {evaluate_s * 1000:.1f} ms, "
          f"ratio {duck_s / evaluate_s:.2f}; the first request (building the facts in memory) {first_s:.1f} s")


if __name__ == "__main__":
    main()
