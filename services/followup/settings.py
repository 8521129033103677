from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import HOUR_SECONDS, WEEK_SECONDS, YEAR_HOURS, ServiceSettings, common


class FollowupSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FOLLOWUP_", populate_by_name=True, extra="ignore")

    port: int = common(8084, "PORT", "Port the HTTP server listens on.")
    grace_hours: float = Field(24, ge=0, le=YEAR_HOURS, description="A follow-up still open this long after `due_at` is overdue.")
    scheduler_seconds: float = Field(
        30, gt=0, le=WEEK_SECONDS, description="How often the scheduler moves follow-ups to due and overdue and creates stalled-stage ones.")
    webhook_urls: str = Field("", description="Comma-separated URLs that get a POST when a follow-up becomes due or overdue.")
    webhook_secret: str = Field("", description="Key of the HMAC-SHA256 signature in `X-Funnelstream-Signature` (needed with webhook URLs).")
    webhook_timeout_seconds: float = Field(5, gt=0, le=HOUR_SECONDS, description="How long one webhook POST may take.")
    webhook_max_attempts: int = Field(10, ge=1, description="Attempts per reminder before it is given up (backoff doubles from 2 s, at most 1 h).")

    @model_validator(mode="after")
    def _secret_with_urls(self) -> FollowupSettings:
        if self.urls() and not self.webhook_secret:
            raise ValueError("FOLLOWUP_WEBHOOK_URLS is set but FOLLOWUP_WEBHOOK_SECRET is empty: receivers could not "
                             "check the signature. Set a secret (e.g. `openssl rand -hex 32`).")
        return self

    def urls(self) -> list[str]:
        return [u.strip() for u in self.webhook_urls.split(",") if u.strip()]

    @property
    def service_name(self) -> str:
        return "followup"
