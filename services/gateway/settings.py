from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import DAY_SECONDS, CommonSettings

SERVICES = ("ingest", "segmentation", "funnel", "followup", "recommendation")


class GatewaySettings(CommonSettings):
    """Leave a `*_url` empty to run that service inside the gateway's process (embedded default)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", populate_by_name=True, extra="ignore")

    ingest_url: str = Field("", description="Base URL of a separately running ingest service.")
    segmentation_url: str = Field("", description="Base URL of a separately running segmentation service.")
    funnel_url: str = Field("", description="Base URL of a separately running funnel service.")
    followup_url: str = Field("", description="Base URL of a separately running follow-up service.")
    recommendation_url: str = Field("", description="Base URL of a separately running recommendation service.")
    processes: bool = Field(
        False, description="Run each service whose URL is empty as a process of its own (all cores busy; logs in DATA_DIR/logs).")
    upstream_timeout_seconds: float = Field(30.0, gt=0, le=DAY_SECONDS, description="How long to wait for a service's answer.")
    max_body_bytes: int = Field(
        1024 * 1024, description="Larger request bodies are refused (413) before reaching a service."
    )
    rate_limit_api: float = Field(
        100, description="Requests per second per API key (bursts up to twice that); 0 turns it off."
    )
    rate_limit_ingest: float = Field(
        1000, description="Requests per second per write key sent with HTTP Basic (bursts up to twice that); 0 = off."
    )
    rate_limit_anonymous: float = Field(
        50, description="Requests per second per client address without a valid key (bursts up to twice that); 0 = off."
    )

    def url_of(self, service: str) -> str:
        url: str = getattr(self, f"{service}_url")
        return url.rstrip("/")
