from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings

SERVICES = ("ingest", "segmentation", "funnel", "followup")


class GatewaySettings(CommonSettings):
    """Leave a `*_url` empty to run that service inside the gateway's process (embedded default)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", populate_by_name=True, extra="ignore")

    ingest_url: str = Field("", description="Base URL of a separately running ingest service.")
    segmentation_url: str = Field("", description="Base URL of a separately running segmentation service.")
    funnel_url: str = Field("", description="Base URL of a separately running funnel service.")
    followup_url: str = Field("", description="Base URL of a separately running follow-up service.")
    upstream_timeout_seconds: float = Field(30.0, description="How long to wait for a service's answer.")
    max_body_bytes: int = Field(
        1024 * 1024, description="Larger request bodies are refused (413) before reaching a service."
    )

    def url_of(self, service: str) -> str:
        url: str = getattr(self, f"{service}_url")
        return url.rstrip("/")
