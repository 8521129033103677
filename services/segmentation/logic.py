"""The built-in segments of docs/api.md section 3, as pure functions. No I/O, no clock.

Shares are compared with exact fractions and scores with integers, so a tier boundary never
moves by a float rounding error (0.7 * 10 is 7.000000000000001 in floats).
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Thresholds:
    churned_days: float = 180
    at_risk_days: float = 90
    loyal_orders: int = 3
    value_high_share: Fraction = Fraction(1, 5)
    value_low_share: Fraction = Fraction(7, 10)
    frequency_window_days: float = 365
    frequency_high_orders: int = 5
    frequency_medium_orders: int = 2


def lifecycle(order_count: int, days_since_last_order: float | None, t: Thresholds) -> str:
    """Exactly one stage per customer; `d` is fractional days since the last order."""
    if order_count == 0 or days_since_last_order is None:
        return "potential"
    if days_since_last_order > t.churned_days:
        return "churned"
    if days_since_last_order > t.at_risk_days:
        return "at_risk"
    if order_count >= t.loyal_orders:
        return "loyal"
    if order_count == 1:
        return "new"
    return "active"


def nps_category(score: int) -> str:
    """promoter 9-10, passive 7-8, detractor 0-6 (docs/api.md section 11)."""
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def frequency_tier(orders_in_window: int, t: Thresholds) -> str | None:
    if orders_in_window >= t.frequency_high_orders:
        return "high"
    if orders_in_window >= t.frequency_medium_orders:
        return "medium"
    if orders_in_window >= 1:
        return "low"
    return None


def value_tiers(revenue: dict[str, float], t: Thresholds) -> dict[str, str]:
    """Among buyers: rank 1 is the highest revenue, ties share the best rank. High reaches at
    least rank 1, so the top buyer is high however few buyers there are (docs/api.md, section 3)."""
    n = len(revenue)
    ordered = sorted(revenue.values())
    high_up_to: Fraction = max(Fraction(1), t.value_high_share * n)
    tiers = {}
    for customer, amount in revenue.items():
        rank = 1 + n - bisect_right(ordered, amount)  # 1 + buyers with strictly more revenue
        if rank <= high_up_to:
            tiers[customer] = "high"
        elif rank > t.value_low_share * n:
            tiers[customer] = "low"
        else:
            tiers[customer] = "medium"
    return tiers


class Rfm(NamedTuple):
    recency_days: float
    r: int
    f: int
    m: int
    label: str


class RfmScores(NamedTuple):
    """Scores of many buyers, a column each (the order of the input columns)."""
    r: NDArray[np.int64]
    f: NDArray[np.int64]
    m: NDArray[np.int64]
    labels: NDArray[np.object_]


def rfm_scores(days: NDArray[np.float64], orders: NDArray[np.int64], money: NDArray[np.float64]) -> RfmScores:
    """score = ceil(5 p), p = the share of buyers whose value is no better than this buyer's (so
    the best get 5): a sort and a binary search per column, in integers, and the label from a
    table of every (r, fm) pair."""
    n = len(days)
    r = _scores(n - np.searchsorted(np.sort(days), days, side="left"), n)  # no better = as many days or more
    f = _scores(np.searchsorted(np.sort(orders), orders, side="right"), n)
    m = _scores(np.searchsorted(np.sort(money), money, side="right"), n)
    return RfmScores(r, f, m, LABEL_TABLE[r, (f + m + 1) // 2])  # fm rounds half up


def rfm(buyers: dict[str, tuple[float, int, float]]) -> dict[str, Rfm]:
    """buyers: customer -> (recency days, order count, revenue); `rfm_scores` per customer."""
    if not buyers:
        return {}
    days, orders, money = (np.array(column) for column in zip(*buyers.values(), strict=True))
    s = rfm_scores(days, orders, money)
    return {
        customer: Rfm(recency, ri, fi, mi, label)
        for customer, recency, ri, fi, mi, label in zip(
            buyers, days.tolist(), s.r.tolist(), s.f.tolist(), s.m.tolist(), s.labels.tolist(), strict=True)
    }


def _scores(no_better: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    return -(-5 * no_better // n)  # ceil(5 * no_better / n) in integers


def rfm_label(r: int, fm: int) -> str:
    """First match wins, in the contract's order."""
    rules = [
        ("champions", r >= 4 and fm >= 4),
        ("cannot_lose_them", r <= 2 and fm == 5),
        ("at_risk", r <= 2 and fm >= 3),
        ("loyal_customers", r >= 3 and fm >= 3),
        ("new_customers", r == 5 and fm == 1),
        ("promising", r == 4 and fm == 1),
        ("potential_loyalists", r >= 4 and fm == 2),
        ("need_attention", r == 3 and fm == 2),
        ("about_to_sleep", r == 3 and fm == 1),
        ("hibernating", r == 2),
        ("lost", r == 1),
    ]
    return next(label for label, matches in rules if matches)


LIFECYCLE_STAGES = ("potential", "new", "active", "loyal", "at_risk", "churned")
NPS_CATEGORIES = ("promoter", "passive", "detractor")
RFM_LABELS = ("champions", "cannot_lose_them", "at_risk", "loyal_customers", "new_customers", "promising",
              "potential_loyalists", "need_attention", "about_to_sleep", "hibernating", "lost")


def builtin_segments() -> dict[str, str]:
    """Every built-in segment key with a one-line description."""
    segments = {f"lifecycle:{s}": f"Lifecycle stage {s.replace('_', ' ')}" for s in LIFECYCLE_STAGES}
    segments |= {f"value:{t}": f"Buyers in the {t} revenue tier" for t in ("high", "medium", "low")}
    segments |= {f"frequency:{t}": f"Buyers with {t} purchase frequency (orders in the window)" for t in ("high", "medium", "low")}
    segments |= {f"rfm:{label}": f"RFM label {label.replace('_', ' ')}" for label in RFM_LABELS}
    segments |= {f"nps:{c}": f"Customers whose latest NPS answer makes them a {c}" for c in NPS_CATEGORIES}
    return segments


# Every (r, fm) pair's label, worked out once from the rules above: LABEL_TABLE[r, fm].
LABEL_TABLE = np.array([[""] * 6] + [[""] + [rfm_label(r, fm) for fm in range(1, 6)] for r in range(1, 6)], dtype=object)
