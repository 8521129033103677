"""Request and response models of the follow-up API (docs/api.md section 5)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import BaseModel, Field

PolicyBody = Annotated[dict[str, Any], Body(description="{key, name, trigger, channel, priority, due_in_hours, "
                                                        "cadence_days?, cancel_on?, assignee?} (+ apply_to_open on PUT)")]


class ManualFollowup(BaseModel):
    customer_id: str = Field(min_length=1, max_length=200)
    channel: Literal["phone", "email", "sms", "meeting", "chat", "task"] = "task"
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    due_at: datetime
    assignee: str | None = Field(None, min_length=1, max_length=200)
    note: str | None = Field(None, max_length=5000)
    reason: str = Field("created by hand", max_length=1000)


class Complete(BaseModel):
    outcome: str = Field(min_length=1, max_length=50, description="e.g. reached, no_answer, converted, not_interested")
    note: str | None = Field(None, max_length=5000)
    next_due_at: datetime | None = Field(None, description="When the next one is due (else the policy's cadence).")


class Snooze(BaseModel):
    until: datetime


class Cancel(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class Assign(BaseModel):
    assignee: str | None = Field(min_length=1, max_length=200)


# --- answers -------------------------------------------------------------------------------------

Number = int | float  # kept as given: 24 stays 24, not 24.0
Status = Literal["pending", "due", "overdue", "done", "cancelled"]


class PolicyAnswer(BaseModel):
    """A policy in force, as POSTed, with its version and whether it is a default one."""

    key: str
    name: str
    trigger: dict[str, Any] = Field(description='{"on": segment_entered, segment} or {"on": stage_entered | '
                                                'stage_stalled, funnel, stage, days (stalled only)}')
    channel: str
    priority: str
    due_in_hours: Number
    cadence_days: Number | None
    cancel_on: list[dict[str, Any]] = Field(description='[{"segment_exited": K} | {"stage_entered": {funnel, stage}}]')
    assignee: str | None
    version: int
    built_in: bool


class FollowupAnswer(BaseModel):
    """A follow-up; `status` is the one the clock gives now (pending -> due -> overdue)."""

    id: str
    policy: str | None = Field(description="None for one created by hand.")
    policy_version: int | None
    customer_id: str
    channel: str
    priority: str
    assignee: str | None
    status: Status
    due_at: str
    created_at: str
    completed_at: str | None
    outcome: str | None
    note: str | None
    reason: str | None


class CompletedAnswer(FollowupAnswer):
    next: FollowupAnswer | None = Field(description="The next one a recurring policy scheduled, if any.")


class StatsRow(BaseModel):
    assignee: str | None
    channel: str
    done_on_time: int
    done_late: int
    overdue: int
    open: int
    cancelled: int


class FollowupStats(BaseModel):
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    items: list[StatsRow]
