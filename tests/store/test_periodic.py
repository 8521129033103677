"""Periodic jobs once per interval across replicas: two replicas (two stores on one database)
whose timers fire in the same interval run the job once; one whose timer fires while the other
runs it skips; a failed run is tried again by the next timer, on any replica. SQLite and
PostgreSQL; the wall clock is the test's to move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from shared.periodic import run_once_per_interval
from shared.store import Store
from tests.store.counting import T0, bus_tables

INTERVAL = 60.0


class DeadlockDetected(Exception):
    sqlstate = "40P01"  # as asyncpg's DeadlockDetectedError carries it


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def replicas(store: Store, store_url: str) -> AsyncIterator[tuple[Store, Store]]:
    other = Store(store_url)  # the second replica: its own engine and connections
    yield store, other
    await other.dispose()


class Job:
    def __init__(self) -> None:
        self.runs = 0
        self.running, self.finish = asyncio.Event(), asyncio.Event()
        self.fail = False
        self.hold = False

    async def __call__(self) -> None:
        self.running.set()
        if self.hold:
            await asyncio.wait_for(self.finish.wait(), 30)
        if self.fail:
            raise RuntimeError("the job failed")
        self.runs += 1


async def fire(replica: Store, job: Job, clock: Clock) -> bool:
    return await run_once_per_interval(replica, bus_tables.periodic, "counting", "nightly", INTERVAL, job, clock)


async def recorded_runs(store: Store) -> int | None:
    async with store.read() as session:
        runs: int | None = await session.scalar(select(bus_tables.periodic.c.runs)
                                                .where(bus_tables.periodic.c.job == "nightly"))
        return runs


class TestOncePerInterval:
    async def test_a_second_replica_whose_timer_fires_later_in_the_interval_skips(
        self, replicas: tuple[Store, Store]
    ) -> None:
        one, two = replicas
        job, clock = Job(), Clock()
        assert await fire(one, job, clock)
        clock.advance(INTERVAL / 3)
        assert not await fire(two, job, clock)
        clock.advance(INTERVAL / 3)
        assert not await fire(one, job, clock)
        clock.advance(INTERVAL / 3)
        assert await fire(two, job, clock)  # the next interval: whichever replica fires first
        assert job.runs == 2
        assert await recorded_runs(one) == 2

    async def test_a_replica_whose_timer_fires_while_another_runs_the_job_skips(
        self, replicas: tuple[Store, Store]
    ) -> None:
        one, two = replicas
        job, clock = Job(), Clock()
        job.hold = True
        first = asyncio.create_task(fire(one, job, clock))
        await asyncio.wait_for(job.running.wait(), 30)
        assert not await asyncio.wait_for(fire(two, job, clock), 30)
        job.finish.set()
        assert await asyncio.wait_for(first, 30)
        assert job.runs == 1
        assert await recorded_runs(two) == 1

    async def test_a_failed_run_is_tried_again_by_the_next_timer_of_any_replica(
        self, replicas: tuple[Store, Store]
    ) -> None:
        one, two = replicas
        job, clock = Job(), Clock()
        job.fail = True
        with pytest.raises(RuntimeError, match="the job failed"):
            await fire(one, job, clock)
        job.fail = False
        clock.advance(1)
        assert await fire(two, job, clock)
        assert job.runs == 1
        assert await recorded_runs(one) == 1

    async def test_a_failed_run_after_a_good_one_keeps_the_good_one_on_record(
        self, replicas: tuple[Store, Store]
    ) -> None:
        one, two = replicas
        job, clock = Job(), Clock()
        assert await fire(one, job, clock)
        clock.advance(INTERVAL)
        job.fail = True
        with pytest.raises(RuntimeError):
            await fire(two, job, clock)
        job.fail = False
        clock.advance(1)
        assert await fire(one, job, clock)
        assert (job.runs, await recorded_runs(two)) == (2, 2)

    async def test_a_run_the_database_aborts_as_a_deadlock_victim_runs_again_at_once(
        self, replicas: tuple[Store, Store]
    ) -> None:
        one, _ = replicas
        job, clock = Job(), Clock()
        aborted: list[int] = []

        async def deadlocked_twice() -> None:
            if len(aborted) < 2:
                aborted.append(1)
                raise DeadlockDetected("deadlock detected")
            await job()

        assert await run_once_per_interval(one, bus_tables.periodic, "counting", "nightly", INTERVAL, deadlocked_twice,
                                           clock)
        assert (len(aborted), job.runs, await recorded_runs(one)) == (2, 1, 1)
