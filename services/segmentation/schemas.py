"""The segmentation API's request and response models (docs/api.md sections 3 and 11)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class HistoryBounded(BaseModel):
    """An answer that leaves `complete_from` out when it is null (the default: every event kept)."""

    complete_from: str | None = Field(
        default=None, description="Only with SEGMENTATION_EVENTS_RETENTION_DAYS set and a behaviour window of the rule that "
        "starts before the retention horizon: that horizon. Behaviour events older than it are no longer kept, so the "
        "rule counts what is left; from this time on its windows are complete.")

    @model_serializer(mode="wrap")
    def _leave_out_complete(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # No return annotation: the answer's schema stays the model's.
        data = handler(self)
        if isinstance(data, dict) and data.get("complete_from") is None:
            data.pop("complete_from", None)
        return data


class SegmentSummary(HistoryBounded):
    key: str
    name: str
    description: str
    built_in: bool
    member_count: int
    rule: dict[str, Any] | None = None
    created_at: str | None = None
    updated_at: str | None = None


class SegmentIn(BaseModel):
    key: str = Field(description="Letters, digits, '_', '-', '.'; no ':' (built-in keys have one).")
    name: str | None = Field(None, max_length=200)
    description: str = Field("", max_length=2000)
    rule: Any = Field(description="The rule (docs/api.md section 3).")


class SegmentUpdate(BaseModel):
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    rule: Any = Field(description="The rule (docs/api.md section 3).")


class PreviewIn(BaseModel):
    rule: Any = Field(description="The rule to count, not saved.")


class Preview(HistoryBounded):
    count: int
    sample: list[str]


class NpsFigures(BaseModel):
    responses: int = Field(description="Customers with an NPS answer in [from, to) (their latest there counts).")
    promoters: int = Field(description="Answers 9-10.")
    passives: int = Field(description="Answers 7-8.")
    detractors: int = Field(description="Answers 0-6.")
    nps: float | None = Field(description="100 x (promoters - detractors) / responses; null over no responses.")


class NpsGroup(NpsFigures):
    value: Any = Field(description="The breakdown value (null for customers without one).")


class NpsReport(NpsFigures):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    breakdown_by: str | None = None
    breakdown: list[NpsGroup] | None = None


class CsatReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    responses: int = Field(description="Customers with a CSAT answer in [from, to) (their latest there counts).")
    average: float | None = Field(description="Mean score (1-5); null over no responses.")
    satisfied_share: float | None = Field(description="Share of responses of 4 or 5; null over no responses.")
