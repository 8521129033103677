"""The bus: `create_bus(settings)` picks the backend the settings name."""
from __future__ import annotations

from shared.bus.base import (
    Bus,
    Consumer,
    OutgoingRecord,
    Record,
    TopicPartition,
    dlq_topic,
    partition_for,
)
from shared.settings import CommonSettings


def create_bus(settings: CommonSettings) -> Bus:
    if settings.bus_backend == "kafka":
        from shared.bus.kafka import KafkaBus
        from shared.bus.shredding import KeyRing
        from shared.identity import resolve_erasure_key

        return KafkaBus(
            settings.kafka_bootstrap_servers,
            partitions=settings.bus_partitions,
            idempotent=settings.kafka_idempotent_producer,
            replication_factor=settings.kafka_replication_factor,
            retention_days=settings.bus_retention_days,
            keyring=KeyRing(resolve_erasure_key(settings)),
        )
    from shared.bus.embedded import EmbeddedBus

    return EmbeddedBus(settings.embedded_bus_path, partitions=settings.bus_partitions)


__all__ = [
    "Bus", "Consumer", "OutgoingRecord", "Record", "TopicPartition", "create_bus", "dlq_topic", "partition_for",
]
