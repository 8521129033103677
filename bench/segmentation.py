"""RFM for 100k buyers: our recompute against DuckDB computing the same labels from the same
data in the same run (answers checked equal). Buyers are the real UCI Online Retail customers'
(recency, orders, revenue), replicated with jitter to reach 100k."""
from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np

from bench.retail import invoice_time, rows
from services.segmentation.logic import rfm_scores

BUYERS = 100_000

RFM_SQL = """
WITH scored AS (
  SELECT customer_id,
    CAST(ceil(5.0 * count(*) OVER (ORDER BY recency DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) / n) AS INT) AS r,
    CAST(ceil(5.0 * count(*) OVER (ORDER BY orders RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) / n) AS INT) AS f,
    CAST(ceil(5.0 * count(*) OVER (ORDER BY revenue RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) / n) AS INT) AS m
  FROM buyers, (SELECT count(*) AS n FROM buyers)
), labelled AS (SELECT customer_id, r, CAST(floor((f + m + 1) / 2) AS INT) AS fm FROM scored)
SELECT customer_id, CASE
  WHEN r >= 4 AND fm >= 4 THEN 'champions' WHEN r <= 2 AND fm = 5 THEN 'cannot_lose_them'
  WHEN r <= 2 AND fm >= 3 THEN 'at_risk' WHEN r >= 3 AND fm >= 3 THEN 'loyal_customers'
  WHEN r = 5 AND fm = 1 THEN 'new_customers' WHEN r = 4 AND fm = 1 THEN 'promising'
  WHEN r >= 4 AND fm = 2 THEN 'potential_loyalists' WHEN r = 3 AND fm = 2 THEN 'need_attention'
  WHEN r = 3 AND fm = 1 THEN 'about_to_sleep' WHEN r = 2 THEN 'hibernating' ELSE 'lost' END AS label
FROM labelled
"""


def retail_buyers() -> dict[str, tuple[float, int, float]]:
    """(days since last order, orders, revenue) of each real customer, at the data set's end."""
    last: dict[str, datetime] = {}
    invoices: dict[str, set[str]] = defaultdict(set)
    revenue: dict[str, float] = defaultdict(float)
    for row in rows():
        if not row["CustomerID"] or row["InvoiceNo"].startswith("C"):
            continue
        customer = row["CustomerID"]
        at = datetime.fromisoformat(invoice_time(row))
        last[customer] = max(last.get(customer, at), at)
        invoices[customer].add(row["InvoiceNo"])
        revenue[customer] += int(row["Quantity"]) * float(row["UnitPrice"])
    end = max(last.values()) + timedelta(days=1)
    return {c: ((end - last[c]).total_seconds() / 86400, len(invoices[c]), round(revenue[c], 2)) for c in last}


def scaled(real: dict[str, tuple[float, int, float]], n: int) -> dict[str, tuple[float, int, float]]:
    rng = random.Random(7)
    base = list(real.values())
    return {f"c{i}": (round(d * rng.uniform(0.9, 1.1), 3), o, round(m * rng.uniform(0.9, 1.1), 2))
            for i, (d, o, m) in enumerate(base[i % len(base)] for i in range(n))}


async def store_recompute(buyers: dict[str, tuple[float, int, float]]) -> tuple[float, float]:
    """The scheduled pass on a real segmentation store: the first one (every buyer enters four
    segments: memberships, history, events) and a steady one a day later."""
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="fs-bench-seg-")
    from sqlalchemy import insert

    from services.segmentation.app import create_app, reevaluate_now
    from services.segmentation.store import profiles

    app = create_app()
    now = datetime(2012, 1, 1, tzinfo=UTC)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        async with runtime.store.transaction() as session:
            await session.execute(insert(profiles), [
                {"customer_id": c, "traits": b"{}", "traits_at": b"{}", "first_seen": now - timedelta(days=d),
                 "last_seen": now - timedelta(days=d), "event_count": o, "order_count": o, "revenue": m,
                 "last_order_at": now - timedelta(days=d)} for c, (d, o, m) in buyers.items()])
        from shared.clock import FixedClock

        runtime.clock = clock = FixedClock(now)
        started = time.perf_counter()
        await reevaluate_now(runtime, app.state.settings)
        first = time.perf_counter() - started
        clock.advance(days=1)
        started = time.perf_counter()
        await reevaluate_now(runtime, app.state.settings)
        return first, time.perf_counter() - started


def main() -> None:
    buyers = scaled(retail_buyers(), BUYERS)
    con = duckdb.connect()
    con.execute("CREATE TABLE buyers (customer_id VARCHAR, recency DOUBLE, orders INT, revenue DOUBLE)")
    con.executemany("INSERT INTO buyers VALUES (?, ?, ?, ?)", [(c, *v) for c, v in buyers.items()])

    # Both start from the buyers' columns already in memory and end with a label per buyer.
    ids = list(buyers)
    days, orders, money = (np.array(column) for column in zip(*buyers.values(), strict=True))
    ours_s = duck_s = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        ours = rfm_scores(days, orders, money).labels
        ours_s = min(ours_s, time.perf_counter() - started)
        started = time.perf_counter()
        theirs = con.execute(RFM_SQL).fetchnumpy()
        duck_s = min(duck_s, time.perf_counter() - started)
    by_customer = dict(zip(theirs["customer_id"].tolist(), theirs["label"].tolist(), strict=True))
    mismatched = sum(1 for c, label in zip(ids, ours.tolist(), strict=True) if by_customer[c] != label)
    assert mismatched == 0, f"{mismatched} labels differ from DuckDB's"
    first_s, steady_s = asyncio.run(store_recompute(buyers))
    print(f"RFM labels for {len(buyers):,} buyers (same answer as DuckDB, best of 3): ours {ours_s * 1000:.1f} ms, "
          f"DuckDB {duck_s * 1000:.1f} ms, ratio {duck_s / ours_s:.2f} (>1 = faster than DuckDB)")
    print(f"scheduled pass on the store (RFM, value tiers, time-based segments, memberships, history, "
          f"events): first {first_s:.1f} s (every buyer enters 4 segments), a day later {steady_s:.1f} s; "
          f"ratio of DuckDB's scoring to the steady pass {duck_s / steady_s:.3f}")


if __name__ == "__main__":
    main()
