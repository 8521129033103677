"""The funnel report for 1M events / 100k customers from maintained state, against DuckDB computing
the same report from the raw events in the same run (numbers checked equal); and the funnel
service's sustained consume rate while it builds that state.

The events come from the real UCI Online Retail invoices: each invoice line is a `Product Viewed`
(up to 5 days before the invoice), most also a `Product Added` (up to a day before), each invoice an
`Order Completed`; customers are replicated with shifted dates to reach 100k. The funnel is
view -> add -> buy within 30 days; the default lifecycle funnel is kept current too.
BENCH_FUNNEL_EVENTS sets the count (default 1,000,000).
"""
from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import duckdb
import httpx

from bench.retail import invoice_time, rows
from shared.events import CUSTOMERS, INTERACTIONS, SEGMENTS, Interaction, encode
from tests.helpers import ADMIN, READER

EVENTS = int(os.environ.get("BENCH_FUNNEL_EVENTS", "1000000"))
CUSTOMERS_WANTED = EVENTS // 10
WINDOW_DAYS = 30
FUNNEL = {"key": "view-add-buy", "conversion_window_days": WINDOW_DAYS, "stages": [
    {"key": "view", "match": {"type": "track", "event": "Product Viewed"}},
    {"key": "add", "match": {"type": "track", "event": "Product Added"}},
    {"key": "buy", "match": {"type": "track", "event": "Order Completed"}},
]}
NAMES = {"view": "Product Viewed", "add": "Product Added", "buy": "Order Completed"}


def retail_events(n: int) -> list[tuple[str, str, datetime]]:
    """(customer, event name, time) for about n events, sorted by nothing in particular."""
    lines: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for row in rows():
        if row["CustomerID"] and not row["InvoiceNo"].startswith("C"):
            lines[row["CustomerID"]].append((row["InvoiceNo"], datetime.fromisoformat(invoice_time(row))))
    rng = random.Random(5)
    real = sorted(lines)
    out: list[tuple[str, str, datetime]] = []
    copy = 0
    while len(out) < n:
        for customer in real:
            me = f"{customer}-{copy}"
            shift = timedelta(days=rng.uniform(0, 30) + 7 * copy)
            invoices: dict[str, datetime] = {}
            for invoice, at in lines[customer][:5]:  # five lines each: about ten events a customer
                at = at + shift
                invoices[invoice] = at
                out.append((me, "Product Viewed", at - timedelta(days=rng.uniform(0, 5))))
                if rng.random() < 0.6:
                    out.append((me, "Product Added", at - timedelta(days=rng.uniform(0, 1))))
            out += [(me, "Order Completed", at) for at in invoices.values()]
            if len(out) >= n:
                break
        copy += 1
    return out[:n]


def duckdb_events(events: list[tuple[str, str, datetime]], channels: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB with the raw events as table `ev` (customer_id, name, ts, and event_id and channel as
    the service gets them)."""
    con = duckdb.connect()
    folder = tempfile.mkdtemp(prefix="fs-bench-funnel-")
    with open(f"{folder}/events.csv", "w") as f:
        f.writelines(f"{c},{name},{at.timestamp()},f{i},{channels[i] if channels else 'direct'}\n"
                     for i, (c, name, at) in enumerate(events))
    con.execute(f"CREATE TABLE ev AS SELECT * FROM read_csv('{folder}/events.csv', header=false, columns="
                "{'customer_id': 'VARCHAR', 'name': 'VARCHAR', 'ts': 'DOUBLE', 'event_id': 'VARCHAR', 'channel': 'VARCHAR'})")
    return con


def counted_attempts_sql() -> str:
    """Each customer's counted attempt of view -> add -> buy from `ev` (customer_id, t1, t2, t3, depth)
    with ASOF joins: the deepest, then the earliest."""
    w = WINDOW_DAYS * 86400.0
    return f"""
    WITH v AS (SELECT customer_id, ts FROM ev WHERE name = 'Product Viewed'),
         a AS (SELECT customer_id, ts FROM ev WHERE name = 'Product Added'),
         o AS (SELECT customer_id, ts FROM ev WHERE name = 'Order Completed'),
         s2 AS (SELECT v.customer_id, v.ts AS t1, CASE WHEN a.ts <= v.ts + {w} THEN a.ts END AS t2
                FROM v ASOF LEFT JOIN a ON v.customer_id = a.customer_id AND a.ts >= v.ts),
         s3 AS (SELECT s2.customer_id, t1, t2, CASE WHEN o.ts <= t1 + {w} THEN o.ts END AS t3
                FROM s2 ASOF LEFT JOIN o ON s2.customer_id = o.customer_id AND o.ts >= s2.t2),
         att AS (SELECT *, 1 + (t2 IS NOT NULL)::INT + (t3 IS NOT NULL)::INT AS depth FROM s3)
    SELECT * FROM att QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY depth DESC, t1, t2, t3) = 1"""


def duckdb_report(events: list[tuple[str, str, datetime]], now: datetime) -> tuple[dict[str, object], float]:
    con = duckdb_events(events)
    w = WINDOW_DAYS * 86400.0
    sql = f"""
    WITH best AS ({counted_attempts_sql()})
    SELECT count(*), count(*) FILTER (depth >= 2), count(*) FILTER (depth >= 3),
           count(*) FILTER (depth = 1 AND {now.timestamp()} <= t1 + {w}),
           count(*) FILTER (depth = 2 AND {now.timestamp()} <= t1 + {w}),
           median(t2 - t1) FILTER (depth >= 2), median(t3 - t2) FILTER (depth >= 3)
    FROM best"""
    best = float("inf")
    row = None
    for _ in range(3):
        started = time.perf_counter()
        row = con.execute(sql).fetchone()
        best = min(best, time.perf_counter() - started)
    assert row is not None
    entered = [row[0], row[1], row[2]]
    return {"entered": entered, "in_progress": [0, row[3], row[4]], "medians": [None, row[5], row[6]]}, best


@asynccontextmanager
async def serving(events: list[tuple[str, str, datetime]], now: datetime,
                  channels: list[str] | None = None) -> AsyncIterator[tuple[httpx.AsyncClient, float]]:
    """The funnel service (ASGI, fresh SQLite, embedded bus) with the view-add-buy funnel, once it
    has consumed the events (each with its channel): a client to it and the consume rate."""
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="fs-bench-funnel-")
    os.environ["FUNNEL_EVENTS_RETENTION_DAYS"] = "3650"  # the data spans more than the default year
    from services.funnel.app import create_app
    from shared.clock import FixedClock

    app = create_app()
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        runtime.clock = FixedClock(now)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            response = await client.post("/api/funnels", json=FUNNEL, headers=ADMIN)
            assert response.status_code == 201, response.text
            started = time.perf_counter()
            batch = []
            for i, (customer, name, at) in enumerate(events):
                batch.append(encode(Interaction(event_id=f"f{i}", customer_id=customer, user_id=customer, type="track",
                                                name=name, occurred_at=at, received_at=at,
                                                channel=channels[i] if channels else "direct")))
                if len(batch) == 5000:
                    await runtime.bus.publish(batch)
                    batch = []
            await runtime.bus.publish(batch)
            reported = started
            while behind := sum((await runtime.bus.lag("funnel", [INTERACTIONS, CUSTOMERS, SEGMENTS])).values()):
                if time.perf_counter() - reported > 15:
                    reported = time.perf_counter()
                    print(f"   consumed {len(events) - behind:,} / {len(events):,}", flush=True)
                await asyncio.sleep(0.5)
            yield client, len(events) / (time.perf_counter() - started)


async def ours(events: list[tuple[str, str, datetime]], now: datetime) -> tuple[dict[str, object], float, float]:
    async with serving(events, now) as (client, rate):
        params = {"from": "2000-01-01T00:00:00Z", "to": (now + timedelta(days=1)).isoformat()}
        best = float("inf")
        body: dict[str, object] = {}
        for _ in range(3):
            started = time.perf_counter()
            response = await client.get(f"/api/funnels/{FUNNEL['key']}/report", params=params, headers=READER)
            best = min(best, time.perf_counter() - started)
            assert response.status_code == 200, response.text
            body = response.json()
    stages = body["stages"]
    assert isinstance(stages, list)
    return ({"entered": [s["entered"] for s in stages], "in_progress": [s["in_progress"] for s in stages],
             "medians": [s["median_seconds_from_previous"] for s in stages]}, best, rate)


def main() -> None:
    print(f"   building {EVENTS:,} events from the UCI Online Retail invoices ...", flush=True)
    events = retail_events(EVENTS)
    now = max(at for _, _, at in events) + timedelta(days=1)
    customers = len({c for c, _, _ in events})
    theirs, duck_s = duckdb_report(events, now)
    print(f"   DuckDB: {duck_s * 1000:.0f} ms; loading the funnel service ...", flush=True)
    mine, ours_s, rate = asyncio.run(ours(events, now))
    assert mine["entered"] == theirs["entered"] and mine["in_progress"] == theirs["in_progress"], (mine, theirs)
    assert all(a == b or (a is not None and b is not None and abs(a - b) < 1e-3)
               for a, b in zip(mine["medians"], theirs["medians"], strict=True)), (mine, theirs)  # type: ignore[call-overload]
    print(f"funnel report over {len(events):,} events / {customers:,} customers (same numbers as DuckDB from raw "
          f"events: entered {mine['entered']}): ours from maintained state {ours_s * 1000:.0f} ms, DuckDB "
          f"{duck_s * 1000:.0f} ms, ratio {duck_s / ours_s:.1f}x (target >= 20x)")
    print(f"funnel consume rate while building that state (2 funnels: view-add-buy and lifecycle): {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
