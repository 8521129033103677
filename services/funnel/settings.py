from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, common


class FunnelSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNEL_", populate_by_name=True, extra="ignore")

    port: int = common(8083, "PORT", "Port the HTTP server listens on.")
    events_retention_days: float = Field(
        365, gt=0, description="How long the funnel service keeps its slim copy of events, from which a new or edited funnel is built.")
    cleanup_seconds: float = Field(
        3600, gt=0, description="How often customers who left a funnel (merged, erased) are purged and old events pruned.")

    @property
    def service_name(self) -> str:
        return "funnel"
