from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, common


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", populate_by_name=True, extra="ignore")

    port: int = common(8081, "PORT", "Port the HTTP server listens on.")
    max_message_bytes: int = Field(32 * 1024, description="A message larger than this is rejected (quarantined).")
    max_request_bytes: int = Field(500 * 1024, description="A request larger than this, as sent or inflated, is a 413.")
    dedupe_window_hours: float = Field(24.0, description="How long a messageId is remembered to drop SDK retries.")

    @property
    def service_name(self) -> str:
        return "ingest"
