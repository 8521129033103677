from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, common


class FunnelSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNEL_", populate_by_name=True, extra="ignore")

    port: int = common(8083, "PORT", "Port the HTTP server listens on.")

    @property
    def service_name(self) -> str:
        return "funnel"
