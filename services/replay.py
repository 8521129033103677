"""`funnelstream replay --service NAME`: rebuild a stopped service's store from the bus.

With the service stopped and the same settings (environment) as the service:
1. take over its consumer group alone (if a member of the running service still holds some of
   its partitions, stop: rebuilding under a live service would corrupt it);
2. relay what its outbox still holds (events it owes the other services), then empty its store:
   every table except what users wrote through the API (custom segments, funnel definitions and
   alerts, with the alerts' firings),
   which is not on the bus and is kept; the schema is migrated to head first;
3. set the group's offsets to 0 on every partition of its topics and run the service's own
   consumer loop (the same handlers, transactions and dedupe) until the lag is 0;
4. run the service's catch-up work (segmentation: its scheduled pass), and drop the outbox rows the
   replay wrote: the other services received those events when they first happened.

Started again, the service answers as before. What the bus no longer holds (records past a
retention, erased customers) is not rebuilt.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI
from sqlalchemy import MetaData, delete, text

from shared.bus.base import Bus, Consumer, TopicPartition
from shared.consumer import ConsumerLoop, next_offsets
from shared.service import Runtime
from shared.settings import ServiceSettings, load_settings
from shared.store import Store

TAKEOVER_SECONDS = 30.0  # a crashed member's partitions are free after its session timeout (10 s)


class ReplayError(RuntimeError):
    """Why the replay cannot run; one line for the operator."""


class Progress(Protocol):
    def set_total(self, total: int) -> None: ...

    def advance(self, records: int) -> None: ...


@dataclass(frozen=True)
class Replayable:
    """What replay needs to know about a service beyond what its app already holds."""

    name: str
    build: Callable[[], tuple[ServiceSettings, FastAPI]]
    migrations: Path
    metadata: MetaData
    # Tables users wrote through the API, not derived from the bus: kept as they are.
    kept: tuple[str, ...]
    # Work the running service does on a timer, done once after catching up.
    after: Callable[[Runtime, Any], Awaitable[object]] | None = None


def _segmentation() -> Replayable:
    from services.segmentation import app, store
    from services.segmentation.settings import SegmentationSettings

    def build() -> tuple[ServiceSettings, FastAPI]:
        settings = load_settings(SegmentationSettings)
        return settings, app.create_app(settings)

    return Replayable("segmentation", build, app.MIGRATIONS, store.metadata, ("segment_definitions",),
                      after=app.reevaluate_now)


def _funnel() -> Replayable:
    from services.funnel import app, store
    from services.funnel.settings import FunnelSettings

    def build() -> tuple[ServiceSettings, FastAPI]:
        settings = load_settings(FunnelSettings)
        return settings, app.create_app(settings)

    # Alerts are written through the API; their firings and webhooks are what was already sent
    # (kept, so a replay does not fire an interval again).
    return Replayable("funnel", build, app.MIGRATIONS, store.metadata,
                      ("funnels", "alerts", "alert_firings", "alert_deliveries"))


def _recommendation() -> Replayable:
    from services.recommendation import app, store
    from services.recommendation.settings import RecommendationSettings

    def build() -> tuple[ServiceSettings, FastAPI]:
        settings = load_settings(RecommendationSettings)
        return settings, app.create_app(settings)

    return Replayable("recommendation", build, app.MIGRATIONS, store.metadata, ())


REPLAYABLE: dict[str, Callable[[], Replayable]] = {"segmentation": _segmentation, "funnel": _funnel,
                                                   "recommendation": _recommendation}
NOT_REPLAYABLE = {
    "ingest": "ingest consumes no topic: its store (timelines, identities, quarantine) is where the "
              "bus's events come from, not built from them; restore it from a backup",
    "followup": "followup's follow-ups carry what people did through its API (assign, snooze, complete) "
                "and webhook deliveries, which are not on the bus; restore it from a backup",
    "gateway": "the gateway has no store",
}


def spec_of(name: str) -> Replayable:
    if name in NOT_REPLAYABLE:
        raise ReplayError(f"cannot replay {name}: {NOT_REPLAYABLE[name]}")
    if name not in REPLAYABLE:
        raise ReplayError(f"unknown service {name!r}; replayable: {', '.join(REPLAYABLE)}")
    return REPLAYABLE[name]()


@dataclass
class Summary:
    records: int
    seconds: float
    kept: tuple[str, ...]
    topics: list[str]


async def replay(spec: Replayable, progress: Progress) -> Summary:
    started = time.monotonic()
    settings, app = spec.build()
    runtime: Runtime = app.state.runtime
    loop = runtime.consumer
    assert loop is not None, f"{spec.name} has no consumer"
    await _reach(runtime.store)
    try:
        await _start_bus(runtime.bus, settings)
        try:
            consumer = await _take_over(runtime.bus, loop)
            try:
                records = await _rebuild(spec, runtime, loop, consumer, settings, progress)
            finally:
                await consumer.stop()
        finally:
            await runtime.bus.stop()
    finally:
        await runtime.store.dispose()
    return Summary(records, time.monotonic() - started, spec.kept, loop.topics)


async def _rebuild(spec: Replayable, runtime: Runtime, loop: ConsumerLoop, consumer: Consumer,
                   settings: ServiceSettings, progress: Progress) -> int:
    await runtime.store.migrate(spec.migrations)
    await runtime.relay.flush()  # what the service still owed the others goes out first
    await _empty(runtime.store, spec)
    await _rewind(consumer)
    records = await _consume_until_caught_up(runtime.bus, loop, consumer, progress)
    if spec.after is not None:
        await spec.after(runtime, settings)
    await _drop_outbox(runtime)
    return records


async def _reach(store: Store) -> None:
    try:
        await asyncio.wait_for(store.ping(), 10)
    except Exception as exc:
        await store.dispose()
        raise ReplayError(f"store unreachable ({_redact(store.url)}): {_reason(exc)}") from None


async def _start_bus(bus: Bus, settings: ServiceSettings) -> None:
    try:
        await asyncio.wait_for(bus.start(), 15)
        await asyncio.wait_for(bus.ping(), 15)
    except Exception as exc:
        await bus.stop()
        where = settings.kafka_bootstrap_servers if settings.bus_backend == "kafka" else settings.embedded_bus_path
        raise ReplayError(f"bus unreachable ({settings.bus_backend} at {where}): {_reason(exc)}") from None


async def _take_over(bus: Bus, loop: ConsumerLoop) -> Consumer:
    """A member of the service's group that holds every partition of its topics."""
    everything = set(await bus.lag(loop.group, loop.topics))
    consumer = bus.consumer(loop.group, loop.topics)
    await consumer.start()
    deadline = time.monotonic() + TAKEOVER_SECONDS
    while consumer.assignment() != everything:
        if time.monotonic() > deadline:
            await consumer.stop()
            raise ReplayError(
                f"another member of consumer group {loop.group!r} still holds some of its partitions: "
                f"stop every {loop.group} process first")
        await consumer.poll(max_records=1, timeout=0.5)  # joins and rebalances; nothing is committed
    return consumer


# The store's own machinery, not data: the lock rows every consumed batch takes (PostgreSQL).
MACHINERY = ("customer_locks",)


async def _empty(store: Store, spec: Replayable) -> None:
    tables = [t for t in reversed(spec.metadata.sorted_tables) if t.name not in (*spec.kept, *MACHINERY)]
    async with store.transaction() as session:
        if store.is_sqlite:
            for table in tables:
                await session.execute(delete(table))
        else:
            names = ", ".join(f'"{t.name}"' for t in tables)
            await session.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))


async def _rewind(consumer: Consumer) -> None:
    start = {tp: 0 for tp in consumer.assignment()}
    await consumer.commit(start)
    for topic, partition in start:
        await consumer.seek(topic, partition, 0)


async def _consume_until_caught_up(bus: Bus, loop: ConsumerLoop, consumer: Consumer, progress: Progress) -> int:
    done = 0
    progress.set_total(await _lag(bus, loop))
    while True:
        records = await consumer.poll(max_records=500, timeout=0.5)
        if records:
            await loop.process(records)
            await consumer.commit(next_offsets(records))
            done += len(records)
            progress.advance(len(records))
            continue
        remaining = await _lag(bus, loop)
        if remaining == 0:
            return done
        progress.set_total(done + remaining)  # records published meanwhile


async def _lag(bus: Bus, loop: ConsumerLoop) -> int:
    lags: dict[TopicPartition, int] = await bus.lag(loop.group, loop.topics)
    return sum(lags.values())


async def _drop_outbox(runtime: Runtime) -> None:
    async with runtime.store.transaction() as session:
        await session.execute(delete(runtime.tables.outbox))


def _reason(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text_}"[:300] if text_ else type(exc).__name__


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return scheme + sep + ("***@" + rest.split("@", 1)[1] if "@" in rest else rest)
