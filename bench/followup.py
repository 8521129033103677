"""The follow-up scheduler's sweep with 1M open follow-ups, against a plain SQL query over the same
table as baseline (the query that only finds the follow-ups falling due, no writes).

1M pending follow-ups for the real UCI customers (replicated), due over the next 100 days. The
clock then moves one day: about 10,000 fall due. The sweep finds them, moves them, publishes each
move on the outbox and queues one webhook per URL; the baseline is `SELECT id FROM followups WHERE
status = 'pending' AND due_at <= now` through the same engine. Both are timed on the same store
(SQLite, the embedded default). BENCH_FOLLOWUPS sets the count (default 1,000,000).
"""
from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, text

from bench.retail import rows

FOLLOWUPS = int(os.environ.get("BENCH_FOLLOWUPS", "1000000"))
NOW = datetime(2024, 3, 1, tzinfo=UTC)


def customers() -> list[str]:
    return sorted({r["CustomerID"] for r in rows() if r["CustomerID"]})


async def run() -> tuple[float, float, float, int]:
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="fs-bench-followup-")
    os.environ["FOLLOWUP_SCHEDULER_SECONDS"] = "86400"
    os.environ["FOLLOWUP_WEBHOOK_URLS"] = "http://127.0.0.1:9/hook"  # queued only: the sender is not timed
    os.environ["FOLLOWUP_WEBHOOK_SECRET"] = "bench"
    from services.followup.app import create_app, run_scheduler
    from services.followup.store import followups
    from shared.clock import FixedClock

    app = create_app()
    people = customers()
    rng = random.Random(3)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        runtime.clock = clock = FixedClock(NOW)
        print(f"   inserting {FOLLOWUPS:,} open follow-ups ...", flush=True)
        async with runtime.store.transaction() as session:
            batch = []
            for i in range(FOLLOWUPS):
                customer = f"{people[i % len(people)]}-{i // len(people)}"
                batch.append({"id": f"f{i}", "policy": "high_value_7d", "policy_version": 1, "customer_id": customer,
                              "channel": "phone", "priority": "high", "assignee": f"rep-{i % 40}", "status": "pending",
                              "due_at": NOW + timedelta(days=rng.uniform(0.01, 100)), "created_at": NOW,
                              "reason": "bench", "open_slot": f"{customer}|high_value_7d", "trigger_key": f"bench|{i}"})
                if len(batch) == 20_000:
                    await session.execute(insert(followups), batch)
                    batch = []
            if batch:
                await session.execute(insert(followups), batch)
        clock.advance(days=1)
        started = time.perf_counter()
        async with runtime.store.read() as session:
            due = len((await session.execute(select(followups.c.id).where(
                followups.c.status == "pending", followups.c.due_at <= clock.now()))).all())
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        moved = await run_scheduler(runtime, app.state.settings)
        sweep = time.perf_counter() - started
        assert moved == due, (moved, due)
        started = time.perf_counter()
        assert await run_scheduler(runtime, app.state.settings) == 0
        idle = time.perf_counter() - started
        async with runtime.store.read() as session:
            queued = (await session.execute(text("SELECT count(*) FROM deliveries"))).scalar_one()
        assert queued == due
    return baseline, sweep, idle, due


def main() -> None:
    baseline, sweep, idle, due = asyncio.run(run())
    print(f"scheduler sweep over {FOLLOWUPS:,} open follow-ups, {due:,} falling due (moved, published, webhooks "
          f"queued): {sweep * 1000:.0f} ms; plain SQL finding them {baseline * 1000:.0f} ms; ratio {baseline / sweep:.2f} "
          f"(1 = as fast as only finding them); a pass with nothing due {idle * 1000:.1f} ms")


if __name__ == "__main__":
    main()
