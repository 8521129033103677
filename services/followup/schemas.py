"""Request models of the follow-up API (docs/api.md section 5)."""
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
