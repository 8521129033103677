from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import WEEK_SECONDS, YEAR_HOURS, ServiceSettings, common


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", populate_by_name=True, extra="ignore")

    port: int = common(8081, "PORT", "Port the HTTP server listens on.")
    max_message_bytes: int = Field(32 * 1024, description="A message larger than this is rejected (quarantined).")
    max_request_bytes: int = Field(500 * 1024, description="A request larger than this, as sent or inflated, is a 413.")
    dedupe_window_hours: float = Field(24.0, ge=0, le=YEAR_HOURS, description="How long a messageId is remembered to drop SDK retries.")
    quarantine_max_rows: int = Field(
        100_000, ge=1, description="The quarantine keeps this many of the newest rejected messages; older ones are "
        "pruned every 10 minutes.")
    bus_maintenance_seconds: float = Field(
        10.0, gt=0, le=WEEK_SECONDS, description="Embedded bus: how often ingest removes erased customers' records from the log "
        "(once every service has applied the erasure) and applies `BUS_RETENTION_DAYS`.")

    @property
    def service_name(self) -> str:
        return "ingest"
