"""Periodic jobs once per interval across a service's replicas.

Every replica runs a timer for each job; when it fires, the replica first asks the store whether
the job is due. `periodic_runs` holds, per job, when its last successful run started: a replica
whose timer fires less than an interval after that (another replica ran it) skips. On PostgreSQL
the check, the job and the record of its run happen under an advisory lock held by a transaction
of their own: a replica whose timer fires while another runs the job skips at once, and the lock
goes with the transaction if the process dies. A failed run records nothing, so the next timer, on
any replica, tries again; one the database aborted as a deadlock victim runs again at once.
SQLite has one writer and one process: the run is claimed before it starts and the claim is given
back if it fails.

Time here is the wall clock (not the service clock tests move): it measures the interval itself.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from shared.metrics import PERIODIC_RUNS
from shared.store import Store, insert_ignoring_conflicts, lock_key, run_through_conflicts

log = logging.getLogger("funnelstream.periodic")
# A run is due once this share of the interval has passed since the last one started (timers and
# wall clocks of different replicas drift a little; a run a little early beats one skipped).
DUE_AFTER = 0.9


def wall_clock() -> datetime:
    return datetime.now(UTC)


async def run_once_per_interval(store: Store, runs: Table, service: str, name: str, seconds: float,
                                work: Callable[[], Awaitable[Any]], now: Callable[[], datetime] = wall_clock) -> bool:
    """Run `work` unless a replica ran job `name` less than an interval ago or is running it now.
    Returns whether it ran; raises what `work` raised."""
    run = _run_on_sqlite if store.is_sqlite else _run_on_postgresql
    try:
        ran = await run(store, runs, name, timedelta(seconds=seconds * DUE_AFTER), lambda: run_through_conflicts(name, work),
                        now)
    except Exception:
        PERIODIC_RUNS.labels(service, name, "failed").inc()
        raise
    PERIODIC_RUNS.labels(service, name, "ran" if ran else "skipped").inc()
    return ran


async def _run_on_postgresql(store: Store, runs: Table, name: str, due_after: timedelta,
                             work: Callable[[], Awaitable[Any]], now: Callable[[], datetime]) -> bool:
    async with store.engine.connect() as conn, conn.begin():
        locked = await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": lock_key(f"job:{name}")})
        if not locked:
            return False  # another replica is running it now
        started = now()
        if not _due(await _last_start(conn, runs, name), started, due_after):
            return False
        await work()
        await _record(conn, runs, name, started)
    return True


async def _run_on_sqlite(store: Store, runs: Table, name: str, due_after: timedelta,
                         work: Callable[[], Awaitable[Any]], now: Callable[[], datetime]) -> bool:
    async with store.transaction() as session:
        started = now()
        last = await _last_start(session, runs, name)
        if not _due(last, started, due_after):
            return False
        await _record(session, runs, name, started)
    try:
        await work()
    except Exception:
        async with store.transaction() as session:  # not run after all: the next timer tries again
            if last is None:
                await session.execute(delete(runs).where(runs.c.job == name))
            else:
                await session.execute(update(runs).where(runs.c.job == name).values(last_started_at=last,
                                                                                   runs=runs.c.runs - 1))
        raise
    return True


def _due(last: datetime | None, now: datetime, due_after: timedelta) -> bool:
    return last is None or now - last >= due_after


async def _last_start(conn: AsyncConnection | AsyncSession, runs: Table, name: str) -> datetime | None:
    last: datetime | None = await conn.scalar(select(runs.c.last_started_at).where(runs.c.job == name))
    return last


async def _record(conn: AsyncConnection | AsyncSession, runs: Table, name: str, started: datetime) -> None:
    await conn.execute(insert_ignoring_conflicts(runs, conn).values(job=name, last_started_at=started, runs=0))
    await conn.execute(update(runs).where(runs.c.job == name).values(last_started_at=started, runs=runs.c.runs + 1))
