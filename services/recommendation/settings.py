from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, common


class RecommendationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECOMMENDATION_", populate_by_name=True, extra="ignore")

    port: int = common(8085, "PORT", "Port the HTTP server listens on.")
    view_weight: float = Field(
        0.3, ge=0, le=1, description="How much a product a customer only looked at (viewed, added to the cart) counts "
        "against one they bought, in their recommendations and in what goes together.")
    half_life_days: float = Field(
        60, gt=0, le=36500, description="A customer's own products count half as much this many days before their "
        "latest order or view (recent interest leads).")

    @property
    def service_name(self) -> str:
        return "recommendation"
