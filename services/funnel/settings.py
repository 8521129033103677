from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import CENTURY_DAYS, DAY_SECONDS, WEEK_SECONDS, ServiceSettings, common


class FunnelSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNEL_", populate_by_name=True, extra="ignore")

    port: int = common(8083, "PORT", "Port the HTTP server listens on.")
    events_retention_days: float = Field(
        0, ge=0, le=CENTURY_DAYS, description="Days the funnel service keeps its copy of each event, from which a new or edited funnel is built. "
        "`0` (the default) keeps every event for ever. Set, reports whose cohort starts before the horizon carry "
        "`complete_from`; matches of existing funnels are kept whatever the age.")
    cleanup_seconds: float = Field(
        3600, gt=0, le=WEEK_SECONDS, description="How often customers who left a funnel (merged, erased) are purged (and, with a retention, old event copies pruned).")
    alerts_seconds: float = Field(
        60, gt=0, le=DAY_SECONDS, description="How often alerts are checked (each fires at most once per interval of its own, by the clock).")
    alert_webhook_urls: str = Field("", description="Comma-separated URLs that get a POST when an alert fires.")
    alert_webhook_secret: str = Field("", description="Key of the HMAC-SHA256 signature in `X-Funnelstream-Signature` of alert webhooks (needed with their URLs).")

    @model_validator(mode="after")
    def _secret_with_urls(self) -> FunnelSettings:
        if self.alert_urls() and not self.alert_webhook_secret:
            raise ValueError("FUNNEL_ALERT_WEBHOOK_URLS is set but FUNNEL_ALERT_WEBHOOK_SECRET is empty: receivers could not "
                             "check the signature. Set a secret (e.g. `openssl rand -hex 32`).")
        return self

    def alert_urls(self) -> list[str]:
        return [u.strip() for u in self.alert_webhook_urls.split(",") if u.strip()]

    @property
    def service_name(self) -> str:
        return "funnel"
