"""Which policies a segment or stage change creates follow-ups under, and which it cancels: worked
out once per segment or (funnel, stage) in a consumed batch, not once per event (issue 13: a
batch holds thousands of changes naming a handful of segments and stages)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from services.followup.followups import Versioned

T = TypeVar("T")


class Triggers:
    def __init__(self, policies: dict[str, Versioned]) -> None:
        self.policies = policies
        self._known: dict[tuple[str, str, str | None], object] = {}

    def created_by_entry(self, segment: str) -> list[Versioned]:
        return self._once(("entry", segment, None), lambda: [
            v for v in self.policies.values() if v.policy.trigger.on == "segment_entered"
            and v.policy.trigger.segment == segment])

    def created_by_stage(self, funnel: str, stage: str | None) -> list[Versioned]:
        return self._once(("stage", funnel, stage), lambda: [
            v for v in self.policies.values() if v.policy.trigger.on == "stage_entered"
            and (v.policy.trigger.funnel, v.policy.trigger.stage) == (funnel, stage)])

    def cancelled_by_exit(self, segment: str) -> list[str]:
        return self._once(("exit", segment, None), lambda: [
            key for key, v in self.policies.items() if v.policy.cancelled_by_exit(segment)])

    def cancelled_by_move(self, funnel: str, to_stage: str | None) -> list[str]:
        """A cancelling stage closes; a customer who moved on is no longer stalled where they were."""
        return self._once(("move", funnel, to_stage), lambda: [
            key for key, v in self.policies.items()
            if (to_stage is not None and v.policy.cancelled_by_stage(funnel, to_stage))
            or (v.policy.trigger.on == "stage_stalled" and v.policy.trigger.funnel == funnel
                and v.policy.trigger.stage != to_stage)])

    def _once(self, key: tuple[str, str, str | None], work_out: Callable[[], T]) -> T:
        if key not in self._known:
            self._known[key] = work_out()
        found: T = self._known[key]  # type: ignore[assignment]
        return found
