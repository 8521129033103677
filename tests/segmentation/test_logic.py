"""The built-in segment rules of docs/api.md section 3 as pure functions: lifecycle stages and their
boundaries, value tiers by revenue rank, frequency tiers, RFM scores and labels."""
from __future__ import annotations

import math
import random
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest

from services.segmentation.logic import (
    RFM_LABELS,
    Rfm,
    Thresholds,
    frequency_tier,
    lifecycle,
    rfm,
    rfm_label,
    value_tiers,
)
from services.segmentation.settings import SegmentationSettings

T = Thresholds()
JUST = 1e-6  # a fraction of a second, in days


class TestLifecycle:
    @pytest.mark.parametrize(
        ("orders", "days", "stage"),
        [
            (0, None, "potential"),
            (1, 0.5, "new"),
            (2, 10, "active"),
            (3, 10, "loyal"),
            (12, 89.9, "loyal"),
            (1, 91, "at_risk"),
            (7, 91, "at_risk"),
            (1, 181, "churned"),
            (7, 500, "churned"),
        ],
    )
    def test_each_stage(self, orders: int, days: float | None, stage: str) -> None:
        assert lifecycle(orders, days, T) == stage

    @pytest.mark.parametrize(("orders", "stage"), [(1, "new"), (2, "active"), (3, "loyal")])
    def test_exactly_90_days_since_the_last_order_is_not_yet_at_risk(self, orders: int, stage: str) -> None:
        assert lifecycle(orders, 90, T) == stage
        assert lifecycle(orders, 90 + JUST, T) == "at_risk"

    def test_exactly_180_days_since_the_last_order_is_at_risk_not_churned(self) -> None:
        assert lifecycle(4, 180, T) == "at_risk"
        assert lifecycle(4, 180 + JUST, T) == "churned"

    def test_thresholds_come_from_settings(self) -> None:
        t = SegmentationSettings(at_risk_days=30, churned_days=60, loyal_orders=5).thresholds()
        assert [lifecycle(4, d, t) for d in (30, 31, 60, 61)] == ["active", "at_risk", "at_risk", "churned"]
        assert lifecycle(5, 1, t) == "loyal"


class TestValueTiers:
    """`value:high` if rank <= max(1, 0.2 N), else `value:low` if rank > 0.7 N, else `value:medium`;
    rank 1 = highest revenue, ties share the best rank. Expected tiers below are worked out by hand."""

    @staticmethod
    def counts(tiers: dict[str, str]) -> dict[str, int]:
        return {tier: list(tiers.values()).count(tier) for tier in ("high", "medium", "low")}

    @staticmethod
    def tiers_in_order(revenue: list[float], t: Thresholds = T) -> list[str]:
        tiers = value_tiers({f"c{i}": float(r) for i, r in enumerate(revenue)}, t)
        return [tiers[f"c{i}"] for i in range(len(revenue))]

    def test_the_only_buyer_is_high(self) -> None:
        # N = 1: max(1, 0.2) = 1, so rank 1 is high (a fresh install's first buyer)
        assert value_tiers({"ann": 42.5}, T) == {"ann": "high"}
        assert value_tiers({"ann": 0.0}, T) == {"ann": "high"}

    @pytest.mark.parametrize(
        ("revenue", "expected"),
        [
            # N = 2: high rank <= 1, low rank > 1.4
            ([20, 10], ["high", "low"]),
            ([10, 10], ["high", "high"]),
            # N = 3: high rank <= 1, low rank > 2.1
            ([30, 20, 10], ["high", "medium", "low"]),
            ([30, 30, 10], ["high", "high", "low"]),          # ranks 1, 1, 3
            ([30, 10, 10], ["high", "medium", "medium"]),     # ranks 1, 2, 2: 2 is not > 2.1
            ([10, 10, 10], ["high", "high", "high"]),
            # N = 5: high rank <= max(1, 1) = 1, low rank > 3.5
            ([50, 40, 30, 20, 10], ["high", "medium", "medium", "low", "low"]),
            ([50, 50, 30, 30, 10], ["high", "high", "medium", "medium", "low"]),  # ranks 1, 1, 3, 3, 5
            ([50, 40, 40, 40, 10], ["high", "medium", "medium", "medium", "low"]),  # ranks 1, 2, 2, 2, 5
            ([50, 40, 30, 30, 30], ["high", "medium", "medium", "medium", "medium"]),  # ranks 1, 2, 3, 3, 3
            # N = 10: high rank <= 2, low rank > 7
            ([100, 90, 80, 70, 60, 50, 40, 30, 20, 10], ["high"] * 2 + ["medium"] * 5 + ["low"] * 3),
            ([100, 100, 100, 70, 60, 50, 40, 30, 20, 10], ["high"] * 3 + ["medium"] * 4 + ["low"] * 3),
            ([100, 90, 90, 70, 60, 50, 40, 30, 30, 30], ["high"] * 3 + ["medium"] * 4 + ["low"] * 3),
        ],
    )
    def test_small_populations_worked_out_by_hand(self, revenue: list[float], expected: list[str]) -> None:
        assert self.tiers_in_order(revenue) == expected

    def test_the_top_buyer_is_high_however_few_buyers(self) -> None:
        for n in range(1, 5):  # 0.2 N < 1
            tiers = self.tiers_in_order([float(n - i) for i in range(n)])
            assert tiers[0] == "high" and tiers.count("high") == 1, n

    def test_ten_buyers_with_distinct_revenue_split_two_five_three(self) -> None:
        tiers = value_tiers({f"c{i}": 10.0 * i for i in range(1, 11)}, T)
        assert [tiers[f"c{i}"] for i in range(10, 0, -1)] == ["high"] * 2 + ["medium"] * 5 + ["low"] * 3

    def test_ties_share_the_best_rank(self) -> None:
        # ranks 1, 2, 2, 2, 5, 6, 7, 7, 9, 10: the three at rank 2 are all in the top 0.2 N = 2
        revenue = [100, 90, 90, 90, 50, 40, 30, 30, 20, 10]
        assert self.tiers_in_order(revenue) == [
            "high", "high", "high", "high", "medium", "medium", "medium", "medium", "low", "low"]

    def test_a_tie_straddling_the_low_boundary_stays_above_it(self) -> None:
        # ranks 1..6, then 7, 7, 7 (rank 7 = 0.7 N is not > 0.7 N), then 10
        revenue = [100, 90, 80, 70, 60, 50, 40, 40, 40, 10]
        tiers = value_tiers({f"c{i}": float(r) for i, r in enumerate(revenue)}, T)
        assert self.counts(tiers) == {"high": 2, "medium": 7, "low": 1}

    def test_everyone_tied_is_high(self) -> None:
        assert set(value_tiers({f"c{i}": 5.0 for i in range(10)}, T).values()) == {"high"}

    def test_seven_buyers_split_one_three_three(self) -> None:
        # 0.2 * 7 = 1.4 -> rank 1 high; 0.7 * 7 = 4.9 -> ranks 5, 6, 7 low
        tiers = value_tiers({f"c{i}": float(i) for i in range(1, 8)}, T)
        assert [tiers[f"c{i}"] for i in range(7, 0, -1)] == ["high"] + ["medium"] * 3 + ["low"] * 3

    def test_boundaries_are_exact_whatever_the_population(self) -> None:
        # 0.7 * 10 is 7.000000000000001 and 0.2 * 15 is 3.0000000000000004 in floats
        for n in range(1, 61):
            tiers = value_tiers({f"c{i}": float(i) for i in range(1, n + 1)}, SegmentationSettings().thresholds())
            ranks = {f"c{i}": n + 1 - i for i in range(1, n + 1)}
            for customer, rank in ranks.items():
                expected = "high" if rank == 1 or 5 * rank <= n else "low" if 10 * rank > 7 * n else "medium"
                assert tiers[customer] == expected, (n, rank)

    @pytest.mark.parametrize("shares", [(Fraction(1, 5), Fraction(7, 10)), (Fraction(1, 10), Fraction(1, 2)),
                                        (Fraction(0), Fraction(9, 10)), (Fraction(1, 3), Fraction(1, 3))])
    def test_random_populations_match_the_brute_force_reference(self, shares: tuple[Fraction, Fraction]) -> None:
        t = Thresholds(value_high_share=shares[0], value_low_share=shares[1])
        rng = random.Random(12)
        for _ in range(300):
            n = rng.randint(1, 40)
            pool = [round(rng.uniform(0, 500), 2) for _ in range(rng.randint(1, n))]  # few values: many ties
            revenue = {f"c{i}": rng.choice(pool) for i in range(n)}
            assert value_tiers(revenue, t) == reference_value_tiers(revenue, t), revenue

    def test_no_buyers_no_tiers(self) -> None:
        assert value_tiers({}, T) == {}


def reference_value_tiers(revenue: dict[str, float], t: Thresholds) -> dict[str, str]:
    """docs/api.md section 3 read literally, one buyer at a time: rank = 1 + buyers with more revenue."""
    n = len(revenue)
    out = {}
    for customer, mine in revenue.items():
        rank = 1 + sum(1 for other in revenue.values() if other > mine)
        if rank <= max(1, t.value_high_share * n):
            out[customer] = "high"
        elif rank > t.value_low_share * n:
            out[customer] = "low"
        else:
            out[customer] = "medium"
    return out


class TestFrequencyTiers:
    @pytest.mark.parametrize(("orders", "tier"), [(0, None), (1, "low"), (2, "medium"), (3, "medium"), (4, "medium"),
                                                  (5, "high"), (40, "high")])
    def test_tier_by_orders_in_the_window(self, orders: int, tier: str | None) -> None:
        assert frequency_tier(orders, T) == tier


def reference_rfm(buyers: dict[str, tuple[float, int, float]]) -> dict[str, Rfm]:
    """docs/api.md section 3 read literally, in the slowest obvious way."""
    n = len(buyers)

    def score(mine: float, everyone: list[float], lower_is_better: bool) -> int:
        no_better = [v for v in everyone if (v >= mine if lower_is_better else v <= mine)]
        return math.ceil(Fraction(5 * len(no_better), n))

    def label(r: int, fm: int) -> str:
        if r >= 4 and fm >= 4:
            return "champions"
        if r <= 2 and fm == 5:
            return "cannot_lose_them"
        if r <= 2 and fm >= 3:
            return "at_risk"
        if r >= 3 and fm >= 3:
            return "loyal_customers"
        if r == 5 and fm == 1:
            return "new_customers"
        if r == 4 and fm == 1:
            return "promising"
        if r >= 4 and fm == 2:
            return "potential_loyalists"
        if r == 3 and fm == 2:
            return "need_attention"
        if r == 3 and fm == 1:
            return "about_to_sleep"
        if r == 2:
            return "hibernating"
        assert r == 1
        return "lost"

    days = [b[0] for b in buyers.values()]
    orders = [float(b[1]) for b in buyers.values()]
    money = [b[2] for b in buyers.values()]
    out = {}
    for customer, (d, o, m) in buyers.items():
        r, f, mm = score(d, days, True), score(o, orders, False), score(m, money, False)
        fm = int((Decimal(f + mm) / 2).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        out[customer] = Rfm(d, r, f, mm, label(r, fm))
    return out


class TestRfmScores:
    def test_a_known_population(self) -> None:
        buyers = {"ann": (1.0, 5, 500.0), "bob": (10.0, 2, 50.0), "cy": (10.0, 2, 60.0), "dee": (100.0, 1, 5.0)}
        scores = rfm(buyers)
        # recency no-better shares 4/4, 3/4, 3/4, 1/4; orders 4/4, 3/4, 3/4, 1/4; revenue 4/4, 2/4, 3/4, 1/4
        assert {c: (s.r, s.f, s.m, s.label) for c, s in scores.items()} == {
            "ann": (5, 5, 5, "champions"),
            "bob": (4, 4, 3, "champions"),  # fm = (4 + 3) / 2 = 3.5 rounds half up to 4
            "cy": (4, 4, 4, "champions"),
            "dee": (2, 2, 2, "hibernating"),
        }
        assert scores["dee"].recency_days == 100.0

    def test_the_best_get_5_and_a_lone_buyer_is_the_best(self) -> None:
        assert rfm({"solo": (400.0, 1, 1.0)})["solo"] == Rfm(400.0, 5, 5, 5, "champions")

    def test_everyone_tied_scores_5(self) -> None:
        scores = rfm({f"c{i}": (3.0, 2, 20.0) for i in range(6)})
        assert {(s.r, s.f, s.m) for s in scores.values()} == {(5, 5, 5)}

    def test_matches_the_contract_on_random_populations_full_of_ties(self) -> None:
        rng = random.Random(20240301)
        for _ in range(400):
            n = rng.randint(1, 40)
            spread = rng.choice([2, 3, 5, 50])  # few distinct values: many ties
            buyers = {
                f"c{i}": (rng.randint(0, spread) * 7.5, rng.randint(1, spread), float(rng.randint(1, spread) * 10))
                for i in range(n)
            }
            assert rfm(buyers) == reference_rfm(buyers), buyers


class TestRfmLabels:
    @pytest.mark.parametrize(
        ("r", "fm", "label"),
        [
            (5, 5, "champions"),             # also loyal_customers: the first rule wins
            (4, 4, "champions"),
            (1, 5, "cannot_lose_them"),      # also at_risk
            (2, 5, "cannot_lose_them"),
            (2, 3, "at_risk"),
            (1, 4, "at_risk"),
            (3, 5, "loyal_customers"),
            (4, 3, "loyal_customers"),
            (5, 1, "new_customers"),
            (4, 1, "promising"),
            (4, 2, "potential_loyalists"),
            (5, 2, "potential_loyalists"),
            (3, 2, "need_attention"),
            (3, 1, "about_to_sleep"),
            (2, 2, "hibernating"),
            (2, 1, "hibernating"),
            (1, 2, "lost"),
            (1, 1, "lost"),
        ],
    )
    def test_first_matching_rule_wins(self, r: int, fm: int, label: str) -> None:
        assert rfm_label(r, fm) == label

    def test_every_score_pair_has_a_label_and_every_label_is_reached(self) -> None:
        reached = {rfm_label(r, fm) for r in range(1, 6) for fm in range(1, 6)}
        assert reached == set(RFM_LABELS)
        assert len(RFM_LABELS) == 11

    def test_fm_rounds_half_up(self) -> None:
        # Five buyers; "mid" has r = 3 (3 of 5 have waited as long or longer) in both populations.
        # f = 1, m = 2: (1 + 2) / 2 = 1.5 -> 2, need_attention
        buyers = {"a": (1.0, 9, 5.0), "b": (2.0, 9, 100.0), "mid": (3.0, 1, 10.0), "d": (4.0, 9, 100.0),
                  "e": (5.0, 9, 100.0)}
        s = rfm(buyers)["mid"]
        assert (s.r, s.f, s.m, s.label) == (3, 1, 2, "need_attention")
        # f = 2, m = 3: (2 + 3) / 2 = 2.5 -> 3, loyal_customers (rounding half down would say need_attention)
        buyers = {"a": (1.0, 1, 10.0), "b": (2.0, 9, 20.0), "mid": (3.0, 2, 30.0), "d": (4.0, 9, 100.0),
                  "e": (5.0, 9, 100.0)}
        s = rfm(buyers)["mid"]
        assert (s.r, s.f, s.m, s.label) == (3, 2, 3, "loyal_customers")
