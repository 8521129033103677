"""The fields a custom segment's rule may use (docs/api.md section 3); the language is `shared.rules`."""
from __future__ import annotations

import re
from typing import Any

from services.segmentation.logic import LIFECYCLE_STAGES, NPS_CATEGORIES, RFM_LABELS
from shared.rules import Rule, RuleError, Vocabulary
from shared.rules import parse as parse_rule

NUMBER_FIELDS = ("event_count", "order_count", "revenue", "avg_order_value",
                 "rfm.recency_days", "rfm.r", "rfm.f", "rfm.m", "nps.score", "csat.score")
CHOICE_FIELDS: dict[str, tuple[str, ...]] = {
    "lifecycle": LIFECYCLE_STAGES,
    "value_tier": ("high", "medium", "low"),
    "frequency_tier": ("high", "medium", "low"),
    "rfm.label": RFM_LABELS,
    "nps.category": NPS_CATEGORIES,
}
TEXT_FIELDS = ("channel",)
# Fields whose value moves with the whole population or with time, not only with the customer's
# own events: rules using them are re-evaluated for everyone by the scheduled pass.
POPULATION_FIELDS = ("value_tier", "rfm.recency_days", "rfm.r", "rfm.f", "rfm.m", "rfm.label")
FUNNEL_FIELD = re.compile(r"^funnel\.([^.]+)\.stage$")
# A behaviour may look back as far as events go (ingest accepts them from 1900): two centuries,
# a bound only so that `now - within_days` stays a date every store holds.
MAX_WITHIN_DAYS = 73_000


def _profile_field(field: str, where: str) -> None:
    if field in NUMBER_FIELDS or field in CHOICE_FIELDS or field in TEXT_FIELDS:
        return
    if field.startswith("traits.") and len(field) > len("traits."):
        return
    if FUNNEL_FIELD.match(field):
        return
    known = ", ".join((*NUMBER_FIELDS, *CHOICE_FIELDS, *TEXT_FIELDS))
    raise RuleError(where, f"unknown field {field!r}; use traits.<name>, funnel.<funnel>.stage or one of {known}")


PROFILE = Vocabulary(check=_profile_field, numbers=frozenset(NUMBER_FIELDS), choices=CHOICE_FIELDS, behaviours=True)


def parse(raw: Any, max_within_days: float = MAX_WITHIN_DAYS) -> Rule:
    """A custom segment's rule, or a RuleError naming the bad part."""
    return parse_rule(raw, PROFILE, max_within_days)
