"""Follow-up policies (docs/api.md section 5): parsing with errors that name the bad part, and the
default policies. Pure: no I/O, no clock."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shared.keys import checked_key, checked_name
from shared.rules import RuleError

CHANNELS = ("phone", "email", "sms", "meeting", "chat", "task")
PRIORITIES = ("low", "normal", "high", "urgent")
TRIGGERS = ("segment_entered", "stage_entered", "stage_stalled")
MAX_DAYS = 36_500  # a century: any longer and due times leave the calendar


@dataclass(frozen=True)
class Trigger:
    on: str
    segment: str | None = None
    funnel: str | None = None
    stage: str | None = None
    days: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on": self.on}
        if self.on == "segment_entered":
            out["segment"] = self.segment
        else:
            out |= {"funnel": self.funnel, "stage": self.stage}
            if self.on == "stage_stalled":
                out["days"] = self.days
        return out


@dataclass(frozen=True)
class CancelOn:
    """Segment exits, and funnel stages entered, that cancel the policy's open follow-ups."""

    segment_exited: tuple[str, ...] = ()
    stage_entered: tuple[tuple[str, str], ...] = ()  # (funnel, stage)

    def to_json(self) -> list[dict[str, Any]]:
        return ([{"segment_exited": s} for s in self.segment_exited]
                + [{"stage_entered": {"funnel": f, "stage": s}} for f, s in self.stage_entered])


@dataclass(frozen=True)
class Policy:
    key: str
    name: str
    trigger: Trigger
    channel: str
    priority: str
    due_in_hours: float
    cadence_days: float | None = None
    cancel_on: CancelOn = CancelOn()
    assignee: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "trigger": self.trigger.to_json(), "channel": self.channel,
                "priority": self.priority, "due_in_hours": self.due_in_hours, "cadence_days": self.cadence_days,
                "cancel_on": self.cancel_on.to_json(), "assignee": self.assignee}

    def cancelled_by_exit(self, segment: str) -> bool:
        """Leaving the segment that triggers it, or one listed in cancel_on, cancels it."""
        return segment in self.cancel_on.segment_exited or (self.trigger.on == "segment_entered" and self.trigger.segment == segment)

    def cancelled_by_stage(self, funnel: str, stage: str) -> bool:
        return (funnel, stage) in self.cancel_on.stage_entered


def parse_policy(raw: Any, key: str | None = None) -> Policy:
    """A policy from JSON, or a RuleError naming the bad part (`trigger.stage`, `cancel_on[1]`)."""
    if not isinstance(raw, dict):
        raise RuleError("body", "a policy is a JSON object")
    allowed = {"key", "name", "trigger", "channel", "priority", "due_in_hours", "cadence_days", "cancel_on", "assignee",
               "apply_to_open"}
    if extra := sorted(set(raw) - allowed):
        raise RuleError("body", f"unexpected key(s) {', '.join(map(repr, extra))}")
    key = checked_key(key if key is not None else raw.get("key"), "key")
    name = checked_name(raw.get("name", key), "name")
    channel = raw.get("channel", "task")
    if channel not in CHANNELS:
        raise RuleError("channel", f"one of {', '.join(CHANNELS)}")
    priority = raw.get("priority", "normal")
    if priority not in PRIORITIES:
        raise RuleError("priority", f"one of {', '.join(PRIORITIES)}")
    due = raw.get("due_in_hours", 24)
    if not _number(due) or not 0 <= due <= MAX_DAYS * 24:
        raise RuleError("due_in_hours", f"hours from the trigger to the due time: a number from 0 to {MAX_DAYS * 24}")
    cadence = raw.get("cadence_days")
    if cadence is not None and (not _number(cadence) or not 0 < cadence <= MAX_DAYS):
        raise RuleError("cadence_days", f"days between recurring follow-ups: a number above 0 and at most {MAX_DAYS}, or null")
    assignee = raw.get("assignee")
    if assignee is not None and (not isinstance(assignee, str) or not 0 < len(assignee) <= 200):
        raise RuleError("assignee", "who does it: a text of 1-200 characters, or null")
    return Policy(key, name, _trigger(raw.get("trigger")), channel, priority, due, cadence,
                  _cancel_on(raw.get("cancel_on", [])), assignee)


def _trigger(raw: Any) -> Trigger:
    if not isinstance(raw, dict) or raw.get("on") not in TRIGGERS:
        raise RuleError("trigger.on", f"one of {', '.join(TRIGGERS)}")
    on = raw["on"]
    if on == "segment_entered":
        _only(raw, {"on", "segment"}, "trigger")
        return Trigger(on, segment=_text(raw.get("segment"), "trigger.segment", "a segment key, e.g. value:high"))
    _only(raw, {"on", "funnel", "stage", "days"} if on == "stage_stalled" else {"on", "funnel", "stage"}, "trigger")
    funnel = _text(raw.get("funnel"), "trigger.funnel", "a funnel key, e.g. lifecycle")
    stage = _text(raw.get("stage"), "trigger.stage", "a stage key of that funnel")
    days = None
    if on == "stage_stalled":
        days = raw.get("days")
        if not _number(days) or not 0 < days <= MAX_DAYS:
            raise RuleError("trigger.days", f"days in the stage before it counts as stalled: above 0, at most {MAX_DAYS}")
    return Trigger(on, funnel=funnel, stage=stage, days=days)


def _cancel_on(raw: Any) -> CancelOn:
    if not isinstance(raw, list):
        raise RuleError("cancel_on", 'a list of {"segment_exited": K} and {"stage_entered": {"funnel": F, "stage": S}}')
    exits: list[str] = []
    stages: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        where = f"cancel_on[{i}]"
        if isinstance(item, dict) and set(item) == {"segment_exited"}:
            exits.append(_text(item["segment_exited"], f"{where}.segment_exited", "a segment key"))
        elif isinstance(item, dict) and set(item) == {"stage_entered"} and isinstance(item["stage_entered"], dict):
            entered = item["stage_entered"]
            stages.append((_text(entered.get("funnel"), f"{where}.stage_entered.funnel", "a funnel key"),
                           _text(entered.get("stage"), f"{where}.stage_entered.stage", "a stage key")))
        else:
            raise RuleError(where, 'either {"segment_exited": K} or {"stage_entered": {"funnel": F, "stage": S}}')
    return CancelOn(tuple(exits), tuple(stages))


def _only(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    if extra := sorted(set(raw) - allowed):
        raise RuleError(where, f"unexpected key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(allowed))}")


def _text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise RuleError(where, what)
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


DEFAULT_POLICIES = {p.key: p for p in (parse_policy(raw) for raw in (
    {"key": "high_value_7d", "name": "High-value customers: a call every 7 days", "channel": "phone", "priority": "high",
     "trigger": {"on": "segment_entered", "segment": "value:high"}, "due_in_hours": 24, "cadence_days": 7},
    {"key": "medium_value_30d", "name": "Medium-value customers: an email every 30 days", "channel": "email",
     "trigger": {"on": "segment_entered", "segment": "value:medium"}, "due_in_hours": 72, "cadence_days": 30},
    {"key": "low_value_90d", "name": "Low-value customers: an email every 90 days", "channel": "email", "priority": "low",
     "trigger": {"on": "segment_entered", "segment": "value:low"}, "due_in_hours": 168, "cadence_days": 90},
    {"key": "welcome_new", "name": "Welcome a new customer", "channel": "email",
     "trigger": {"on": "segment_entered", "segment": "lifecycle:new"}, "due_in_hours": 24},
    {"key": "winback_churned", "name": "Win back a churned customer", "channel": "email", "priority": "high",
     "trigger": {"on": "segment_entered", "segment": "lifecycle:churned"}, "due_in_hours": 48},
    {"key": "stalled_consideration_3d", "name": "Nudge a customer stalled in consideration", "channel": "email",
     "trigger": {"on": "stage_stalled", "funnel": "lifecycle", "stage": "consideration", "days": 3},
     "due_in_hours": 24, "cancel_on": [{"stage_entered": {"funnel": "lifecycle", "stage": "purchase"}}]},
    {"key": "satisfaction_after_purchase_7d", "name": "Ask about satisfaction a week after a purchase", "channel": "email",
     "trigger": {"on": "stage_entered", "funnel": "lifecycle", "stage": "purchase"}, "due_in_hours": 168},
    # Leaving nps:detractor (the customer's next NPS answer is not a detractor's) cancels it.
    {"key": "detractor_callback_24h", "name": "Call back a detractor (NPS 0-6) within a day", "channel": "phone",
     "priority": "high", "trigger": {"on": "segment_entered", "segment": "nps:detractor"}, "due_in_hours": 24},
))}
