from __future__ import annotations

from fractions import Fraction

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.segmentation.logic import Thresholds
from shared.settings import CENTURY_DAYS, WEEK_SECONDS, ServiceSettings, common


class SegmentationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SEGMENTATION_", populate_by_name=True, extra="ignore")

    port: int = common(8082, "PORT", "Port the HTTP server listens on.")
    churned_days: float = Field(180, ge=0, le=CENTURY_DAYS, description="A buyer whose last order is older is `lifecycle:churned`.")
    at_risk_days: float = Field(90, ge=0, le=CENTURY_DAYS, description="A buyer whose last order is older is `lifecycle:at_risk`.")
    loyal_orders: int = Field(3, description="Orders that make a recent buyer `lifecycle:loyal`.")
    value_high_share: float = Field(0.2, description="Top share of buyers by revenue in `value:high`.")
    value_low_share: float = Field(0.7, description="Buyers ranked below this share are `value:low`.")
    frequency_window_days: float = Field(365, gt=0, le=CENTURY_DAYS, description="Window of the frequency tiers.")
    frequency_high_orders: int = Field(5, description="Orders in the window for `frequency:high`.")
    frequency_medium_orders: int = Field(2, description="Orders in the window for `frequency:medium`.")
    events_retention_days: float = Field(
        0, ge=0, le=CENTURY_DAYS, description="Days customers' events are kept for behaviour conditions. `0` (the default) keeps "
        "every event for ever. Set, a rule may still look further back: its segment and preview answers carry "
        "`complete_from` (the horizon), as behaviour before it is no longer counted.",
    )
    preview_sample_size: int = Field(10, ge=0, le=1000, description="Customer ids `POST /api/segments:preview` returns as `sample`.")
    reevaluate_seconds: float = Field(
        60, gt=0, le=WEEK_SECONDS, description="How often time-based segments and the percentile tiers (value, RFM) are recomputed."
    )

    @property
    def service_name(self) -> str:
        return "segmentation"

    def thresholds(self) -> Thresholds:
        return Thresholds(
            churned_days=self.churned_days,
            at_risk_days=self.at_risk_days,
            loyal_orders=self.loyal_orders,
            value_high_share=Fraction(str(self.value_high_share)),
            value_low_share=Fraction(str(self.value_low_share)),
            frequency_window_days=self.frequency_window_days,
            frequency_high_orders=self.frequency_high_orders,
            frequency_medium_orders=self.frequency_medium_orders,
        )
