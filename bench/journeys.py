"""Journey analytics (API.md section 9) over 1M events / ~110k customers through the funnel
service's API, against DuckDB computing the same answers from the raw events in the same run
(numbers checked equal before any time is printed).

The events are the funnel benchmark's (bench/funnel.py: the real UCI Online Retail invoices as
`Product Viewed`, `Product Added` and `Order Completed`, customers replicated to reach the count),
each with a channel drawn at random (seeded). The service consumes them from the embedded bus and
answers over ASGI: weekly trends, attribution of `buy` (linear and position_based), touchpoints
of moving into `buy` and the paths of those who stopped before `add`. DuckDB starts from the same
events as a table and finds each customer's counted attempt with the funnel benchmark's ASOF joins.
BENCH_FUNNEL_EVENTS sets the count (default 1,000,000).
"""
from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import duckdb
import httpx

from bench.funnel import (
    EVENTS,
    FUNNEL,
    WINDOW_DAYS,
    counted_attempts_sql,
    duckdb_events,
    retail_events,
    serving,
)
from tests.helpers import READER

CHANNELS = ["direct", "email", "search", "social", "ads", "referral"]
WEIGHTS = [30, 20, 25, 10, 10, 5]
W = WINDOW_DAYS * 86400.0
REPEATS = 3


def best_of(run: Callable[[], Any]) -> tuple[Any, float]:
    best, answer = float("inf"), None
    for _ in range(REPEATS):
        started = time.perf_counter()
        answer = run()
        best = min(best, time.perf_counter() - started)
    return answer, best


def duckdb_answers(con: duckdb.DuckDBPyConnection, start: float, end: float, now: float) -> dict[str, tuple[Any, float]]:
    """Each answer from the raw events, with the best of REPEATS times."""
    best = f"best AS ({counted_attempts_sql()})"
    trends = f"""WITH {best}
    SELECT epoch(date_trunc('week', to_timestamp(t1) AT TIME ZONE 'UTC')) AS week, count(*),
           count(*) FILTER (depth >= 2), count(*) FILTER (depth >= 3)
    FROM best WHERE t1 >= {start} AND t1 < {end} GROUP BY week ORDER BY week"""

    def attribution(weight: str) -> str:
        return f"""WITH {best},
        conv AS (SELECT customer_id, t1, t3 FROM best WHERE depth >= 3 AND t3 >= {start} AND t3 < {end}),
        touch AS (SELECT ev.channel, row_number() OVER (PARTITION BY c.customer_id ORDER BY ev.ts, ev.event_id) AS k,
                         count(*) OVER (PARTITION BY c.customer_id) AS n
                  FROM conv c JOIN ev ON ev.customer_id = c.customer_id AND ev.ts >= c.t1 AND ev.ts <= c.t3)
        SELECT channel, sum({weight}), (SELECT count(*) FROM conv) FROM touch GROUP BY channel"""

    touchpoints = f"""WITH {best},
    pop AS (SELECT customer_id, t1, t2, t3, depth > 2 AS moved FROM best WHERE t1 >= {start} AND t1 < {end} AND depth >= 2),
    seen AS (SELECT DISTINCT p.customer_id, ev.name, p.moved FROM pop p JOIN ev ON ev.customer_id = p.customer_id
             AND ev.ts > p.t2 AND ((p.moved AND ev.ts < p.t3) OR (NOT p.moved AND ev.ts <= p.t1 + {W}))),
    tot AS (SELECT count(*) AS total, count(*) FILTER (moved) AS moved_total FROM pop),
    per AS (SELECT name, count(*) AS customers, count(*) FILTER (moved) AS converted FROM seen GROUP BY name
            HAVING count(*) >= 5),
    cells AS (SELECT name, customers, converted, total, moved_total, converted::DOUBLE AS a,
                     (customers - converted)::DOUBLE AS b, (moved_total - converted)::DOUBLE AS c,
                     (total - customers - (moved_total - converted))::DOUBLE AS d FROM per, tot),
    odds AS (SELECT *, CASE WHEN a = 0 OR b = 0 OR c = 0 OR d = 0 THEN 0.5 ELSE 0 END AS e FROM cells)
    SELECT name, customers, converted, converted / customers,
           CASE WHEN total > customers THEN (moved_total - converted) / (total - customers) END,
           ((a + e) / (b + e)) / ((c + e) / (d + e)) AS ratio, total, moved_total
    FROM odds ORDER BY abs(ln(ratio)) DESC, name LIMIT 20"""
    paths = f"""WITH {best},
    stopped AS (SELECT customer_id, t1 FROM best WHERE t1 >= {start} AND t1 < {end} AND depth = 1 AND t1 + {W} < {now}),
    nxt AS (SELECT s.customer_id, ev.name, row_number() OVER (PARTITION BY s.customer_id ORDER BY ev.ts, ev.event_id) AS k
            FROM stopped s JOIN ev ON ev.customer_id = s.customer_id AND ev.ts > s.t1 AND ev.ts <= s.t1 + {W}),
    seq AS (SELECT s.customer_id, coalesce(list(n.name ORDER BY n.k) FILTER (WHERE n.name IS NOT NULL), []) AS steps
            FROM stopped s LEFT JOIN nxt n ON n.customer_id = s.customer_id AND n.k <= 3 GROUP BY s.customer_id)
    SELECT steps, count(*) AS customers, (SELECT count(*) FROM stopped) FROM seq GROUP BY steps
    ORDER BY customers DESC, steps LIMIT 20"""
    linear = "1.0 / n"
    position = "CASE WHEN n = 1 THEN 1.0 WHEN n = 2 THEN 0.5 WHEN k = 1 OR k = n THEN 0.4 ELSE 0.2 / (n - 2) END"
    queries = {"trends": trends, "attribution linear": attribution(linear),
               "attribution position_based": attribution(position), "touchpoints": touchpoints, "paths": paths}
    return {name: best_of(lambda sql=sql: con.execute(sql).fetchall()) for name, sql in queries.items()}  # type: ignore[misc]


async def service_answers(client: httpx.AsyncClient, start: datetime, end: datetime) -> dict[str, tuple[Any, float, float]]:
    """Each answer through the API: (body, best of REPEATS, the first request's time)."""
    key = FUNNEL["key"]
    window = {"from": start.isoformat(), "to": end.isoformat()}
    requests = {"trends": ("trends", {"interval": "week"}),
                "attribution linear": ("attribution", {"stage": "buy", "model": "linear"}),
                "attribution position_based": ("attribution", {"stage": "buy", "model": "position_based"}),
                "touchpoints": ("touchpoints", {"stage": "buy"}),
                "paths": ("paths", {"stage": "add", "steps": 3})}
    out = {}
    for name, (route, params) in requests.items():
        times = []
        body: Any = None
        for _ in range(REPEATS + 1):
            started = time.perf_counter()
            response = await client.get(f"/api/funnels/{key}/{route}", params={**window, **params}, headers=READER)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            body = response.json()
        out[name] = (body, min(times[1:]), times[0])
    return out


def close(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9))


def check_equal(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Every answer of the service equal to DuckDB's (floats to 1e-9)."""
    weeks = {round(datetime.fromisoformat(p["start"]).timestamp()): [s["entered"] for s in p["stages"]]
             for p in mine["trends"]["periods"] if p["stages"][0]["entered"]}
    assert weeks == {round(w): [a, b, c] for w, a, b, c in theirs["trends"]}, "trends differ"
    for name in ("attribution linear", "attribution position_based"):
        body, rows = mine[name], theirs[name]
        assert body["conversions"] == rows[0][2], (name, body["conversions"], rows[0][2])
        credits = {r["channel"]: r["credit"] for r in body["channels"]}
        assert credits.keys() == {c for c, _, _ in rows} and all(close(credits[c], v) for c, v, _ in rows), (name, credits, rows)
    body, rows = mine["touchpoints"], theirs["touchpoints"]
    assert rows and (body["customers"], body["converted"]) == (rows[0][6], rows[0][7]), (body, rows)
    assert [r["name"] for r in body["touchpoints"]] == [r[0] for r in rows], (body, rows)
    for r, (_, customers, converted, rate, without, odds, _, _) in zip(body["touchpoints"], rows, strict=True):
        assert (r["customers"], r["converted"]) == (customers, converted) and close(r["rate"], rate) \
            and close(r["rate_without"], without) and close(r["odds_ratio"], odds), (r, rows)
    body, rows = mine["paths"], theirs["paths"]
    assert body["total"] == (rows[0][2] if rows else 0), (body["total"], rows)
    assert [(p["steps"], p["customers"]) for p in body["paths"]] == [(list(s), n) for s, n, _ in rows], (body, rows)


async def run_service(events: list[tuple[str, str, datetime]], channels: list[str], now: datetime, start: datetime,
                      end: datetime) -> tuple[dict[str, tuple[Any, float, float]], float]:
    async with serving(events, now, channels) as (client, rate):
        return await service_answers(client, start, end), rate


def main() -> None:
    print(f"   building {EVENTS:,} events from the UCI Online Retail invoices ...", flush=True)
    events = retail_events(EVENTS)
    rng = random.Random(11)
    channels = rng.choices(CHANNELS, WEIGHTS, k=len(events))
    now = max(at for _, _, at in events) + timedelta(days=1)
    start = min(at for _, _, at in events) - timedelta(days=1)
    end = now + timedelta(days=1)
    customers = len({c for c, _, _ in events})
    theirs = duckdb_answers(duckdb_events(events, channels), start.timestamp(), end.timestamp(), now.timestamp())
    print("   DuckDB: " + ", ".join(f"{n} {s * 1000:.0f} ms" for n, (_, s) in theirs.items())
          + "; loading the funnel service ...", flush=True)
    mine, rate = asyncio.run(run_service(events, channels, now, start, end))
    check_equal({n: body for n, (body, _, _) in mine.items()}, {n: rows for n, (rows, _) in theirs.items()})
    print(f"journey answers over {len(events):,} events / {customers:,} customers (same numbers as DuckDB from raw "
          f"events; the service consumed them at {rate:,.0f} events/s):")
    for name, (_, ours_s, first_s) in mine.items():
        duck_s = theirs[name][1]
        print(f"   {name}: ours {ours_s * 1000:.0f} ms (first request {first_s * 1000:.0f} ms), DuckDB "
              f"{duck_s * 1000:.0f} ms, ratio {duck_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
