"""Which policies a segment or stage change creates follow-ups under, and which it cancels: worked
out once per segment or (funnel, stage) in a consumed batch, not once per event (issue 13: a
batch holds thousands of changes naming a handful of segments and stages). Each answer is a dict
lookup after the first."""
from __future__ import annotations

from services.followup.followups import Versioned


class Triggers:
    def __init__(self, policies: dict[str, Versioned]) -> None:
        self.policies = policies
        self._entry: dict[str, list[Versioned]] = {}
        self._stage: dict[tuple[str, str | None], list[Versioned]] = {}
        self._exit: dict[str, list[str]] = {}
        self._move: dict[tuple[str, str | None], list[str]] = {}

    def created_by_entry(self, segment: str) -> list[Versioned]:
        found = self._entry.get(segment)
        if found is None:
            found = self._entry[segment] = [
                v for v in self.policies.values() if v.policy.trigger.on == "segment_entered"
                and v.policy.trigger.segment == segment]
        return found

    def created_by_stage(self, funnel: str, stage: str | None) -> list[Versioned]:
        found = self._stage.get((funnel, stage))
        if found is None:
            found = self._stage[(funnel, stage)] = [
                v for v in self.policies.values() if v.policy.trigger.on == "stage_entered"
                and (v.policy.trigger.funnel, v.policy.trigger.stage) == (funnel, stage)]
        return found

    def cancelled_by_exit(self, segment: str) -> list[str]:
        found = self._exit.get(segment)
        if found is None:
            found = self._exit[segment] = [key for key, v in self.policies.items() if v.policy.cancelled_by_exit(segment)]
        return found

    def cancelled_by_move(self, funnel: str, to_stage: str | None) -> list[str]:
        """A cancelling stage closes; a customer who moved on is no longer stalled where they were."""
        found = self._move.get((funnel, to_stage))
        if found is None:
            found = self._move[(funnel, to_stage)] = [
                key for key, v in self.policies.items()
                if (to_stage is not None and v.policy.cancelled_by_stage(funnel, to_stage))
                or (v.policy.trigger.on == "stage_stalled" and v.policy.trigger.funnel == funnel
                    and v.policy.trigger.stage != to_stage)]
        return found
