"""Request and response models of the funnel API (docs/api.md sections 4 and 9)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Field

# Definitions arrive as raw JSON: logic.parse_funnel and alerts.parse_alert check them and name the
# bad field in a 422 (docs/api.md), which a pydantic model here would answer differently.
FunnelBody = Annotated[dict[str, Any], Body(description="{key, name, stages: [{key, name, match, max_days_from_previous?}], conversion_window_days}")]
AlertBody = Annotated[dict[str, Any], Body(description="{key, funnel, stage, interval: day|week, drop_pct, min_entered}")]

Number = int | float  # kept as given: 30 stays 30, not 30.0


class FunnelSummary(BaseModel):
    """A funnel's definition, whether it is built in, and how many customers are at each stage now."""

    key: str
    name: str
    conversion_window_days: Number
    stages: list[dict[str, Any]] = Field(description="{key, name, match, max_days_from_previous?} per stage, in order.")
    built_in: bool
    customers: dict[str, int] = Field(description="Stage key -> customers whose furthest stage it is now.")


class StageReport(BaseModel):
    stage: str
    entered: int
    converted_from_previous_rate: float | None = Field(description="null for the first stage and over 0 customers.")
    drop_off: int
    in_progress: int = Field(description="Stopped at the previous stage with their window still open.")
    median_seconds_from_previous: float | None


class BreakdownGroup(BaseModel):
    value: Any = Field(description="The breakdown value (null for customers without one).")
    customers: int
    stages: list[StageReport]
    overall_conversion_rate: float | None


class FunnelReport(BaseModel):
    """The report of a cohort: customers whose counted first step is in [from, to)."""

    model_config = ConfigDict(populate_by_name=True)

    funnel: str
    from_: str = Field(alias="from")
    to: str
    customers: int
    stages: list[StageReport]
    overall_conversion_rate: float | None
    complete_from: str | None = Field(
        default=None, description="Only with FUNNEL_EVENTS_RETENTION_DAYS set and a cohort that starts before the retention "
        "horizon: that horizon. Event copies older than it are not kept, so a funnel created or edited since may "
        "count fewer customers there than the events would give; from this time on the report is complete. "
        "Absent otherwise (retention off, the default: every event counts at any age).")
    breakdown_by: str | None = None
    breakdown: list[BreakdownGroup] | None = None


class Window(BaseModel):
    """The cohort or conversion range an answer covers: [from, to)."""

    model_config = ConfigDict(populate_by_name=True)

    funnel: str
    from_: str = Field(alias="from")
    to: str


class StageWindow(BaseModel):
    """An answer about one stage of the funnel over [from, to)."""

    model_config = ConfigDict(populate_by_name=True)

    funnel: str
    stage: str
    from_: str = Field(alias="from")
    to: str


class StageEntered(BaseModel):
    stage: str
    entered: int


class TrendPeriod(BaseModel):
    start: str
    stages: list[StageEntered]
    overall_conversion_rate: float | None


class FunnelTrends(Window):
    interval: str
    periods: list[TrendPeriod]


class ChannelCredit(BaseModel):
    channel: str | None = Field(description="null: conversions without a touchpoint.")
    credit: float
    share: float
    revenue: float | None = Field(default=None, description="Only when the stage's events carry a revenue.")


class Attribution(StageWindow):
    model: str
    conversions: int
    channels: list[ChannelCredit]


class Touchpoint(BaseModel):
    name: str
    customers: int
    converted: int
    rate: float
    rate_without: float | None
    odds_ratio: float


class Touchpoints(StageWindow):
    customers: int
    converted: int
    touchpoints: list[Touchpoint]


class PathCount(BaseModel):
    steps: list[str]
    customers: int


class Paths(StageWindow):
    steps: int
    total: int
    paths: list[PathCount]


class Transition(BaseModel):
    customer_id: str
    from_stage: str | None
    to_stage: str | None
    at: str
    event_id: str | None


class AttemptStep(BaseModel):
    stage: str
    at: str
    event_id: str


class CustomerInFunnel(BaseModel):
    customer_id: str
    funnel: str
    stage: str | None
    reached_at: str | None
    attempt: list[AttemptStep]
    transitions: list[Transition]


class StageCustomer(BaseModel):
    customer_id: str
    reached_at: str
    days_in_stage: float


class Alert(BaseModel):
    key: str
    funnel: str
    stage: str
    interval: str = Field(description="`day` or `week`.")
    drop_pct: Number
    min_entered: int


class AlertFiring(BaseModel):
    alert: str
    funnel: str
    stage: str
    interval: str
    period_start: str
    rate: float
    baseline: float
    drop_pct: float
    entered_previous: int
    fired_at: str
