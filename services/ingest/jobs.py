"""The ingest service's periodic work: pruning (message ids past the dedupe window, the
quarantine past its bound) and the bus log's maintenance (erasures, retention)."""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from services.ingest.ingestion import prune_quarantine, prune_seen
from services.ingest.settings import IngestSettings
from shared.bus.embedded import EmbeddedBus
from shared.bus.kafka import KafkaBus
from shared.bus.maintenance import KafkaErasures, maintain
from shared.service import Runtime

log = logging.getLogger("funnelstream.ingest")


async def maintain_bus_log(runtime: Runtime, settings: IngestSettings) -> None:
    """Every INGEST_BUS_MAINTENANCE_SECONDS, erasures every service has applied reach the bus log:
    on the embedded log their records go (and records past retention); on Kafka their keys are
    shredded (Kafka applies `retention.ms` itself). Safe in several replicas at once."""
    kafka = KafkaErasures(runtime.bus) if isinstance(runtime.bus, KafkaBus) else None
    try:
        while not await _stopping_within(runtime, settings.bus_maintenance_seconds):
            try:
                if isinstance(runtime.bus, EmbeddedBus):
                    await maintain(runtime.bus, int(time.time() * 1000), settings.bus_retention_days)
                elif kafka is not None:
                    await kafka.run_once()
            except Exception:
                log.exception("bus maintenance failed; next try in %s s", settings.bus_maintenance_seconds)
    finally:
        if kafka is not None:
            await kafka.stop()


async def _stopping_within(runtime: Runtime, seconds: float) -> bool:
    try:
        await asyncio.wait_for(runtime.stopping.wait(), seconds)
    except TimeoutError:
        pass
    return runtime.stopping.is_set()


async def prune(runtime: Runtime, settings: IngestSettings) -> None:
    """Forget message ids past the dedupe window; keep the quarantine within its bound."""
    async with runtime.store.transaction() as session:
        await prune_seen(session, runtime.clock.now() - timedelta(hours=settings.dedupe_window_hours))
        await prune_quarantine(session, settings.quarantine_max_rows)
