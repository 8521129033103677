"""The contract's funnel semantics (docs/api.md section 4) on logic.py alone: hand-made cases with exact
stage times, then random event sets held to a brute-force reference (every ordering of events,
the contract's rule), and reports held to a reference computed from the attempts."""
from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from itertools import permutations
from typing import Any

import numpy as np
import pytest

from services.funnel.logic import (
    LIFECYCLE,
    Funnel,
    Matched,
    StageMasks,
    _earliest_attempt,
    _searched_attempt,
    counted_attempt,
    event_document,
    parse_funnel,
    report,
)

DAY = 86400.0
T = 1_700_000_000.0  # any epoch second; times below are days after it


def funnel(*stages: dict[str, Any] | None, window: float = 30) -> Funnel:
    """A funnel of track events s0, s1, ...; a dict adds to its stage (max_days_from_previous)."""
    return parse_funnel({"key": "f", "conversion_window_days": window, "stages": [
        {"key": f"s{i}", "match": {"type": "track", "event": f"s{i}"}, **(extra or {})} for i, extra in enumerate(stages)]})


def ev(event_id: str, day: float, *stages: int, seconds: float = 0) -> Matched:
    return Matched(T + day * DAY + seconds, event_id, sum(1 << s for s in stages))


def days(f: Funnel, *events: Matched) -> list[float]:
    """The counted attempt's stage times, in days after T."""
    return [(at - T) / DAY for at in counted_attempt(f, events).times]


# --- the brute-force reference -----------------------------------------------------------------

def reference_attempt(f: Funnel, matched: Sequence[Matched]) -> tuple[float, ...]:
    """The contract read literally: try every sequence of different events for stages 1..k; the
    deepest that fits wins, and among those the earliest times compared stage by stage."""
    window = f.conversion_window_days * DAY
    best: tuple[float, ...] = ()
    for depth in range(1, len(f.stages) + 1):
        fits = [tuple(e.at for e in combo) for combo in permutations(matched, depth) if _fits(f, combo, window)]
        if not fits:
            return best  # a prefix of an attempt is an attempt: nothing deeper either
        best = min(fits)
    return best


def _fits(f: Funnel, combo: tuple[Matched, ...], window: float) -> bool:
    for i, e in enumerate(combo):
        if not e.stages >> i & 1:
            return False
        if i and not combo[i - 1].at <= e.at:
            return False
        sla = f.stages[i].max_days_from_previous
        if i and sla is not None and e.at - combo[i - 1].at > sla * DAY:
            return False
    return combo[-1].at - combo[0].at <= window


def reference_report(f: Funnel, attempts: Sequence[tuple[float, ...]], now: float) -> dict[str, Any]:
    """The report of docs/api.md section 4, straight from the cohort's counted attempts' times."""
    cohort = [t for t in attempts if t]
    window = f.conversion_window_days * DAY
    entered = [sum(1 for t in cohort if len(t) > i) for i in range(len(f.stages))]
    stages = [{"stage": f.stages[0].key, "entered": entered[0], "converted_from_previous_rate": None,
               "drop_off": 0, "in_progress": 0, "median_seconds_from_previous": None}]
    for i, stage in enumerate(f.stages[1:], start=1):
        sla = stage.max_days_from_previous
        waiting = sum(1 for t in cohort if len(t) == i and now - t[0] <= window and (sla is None or now - t[-1] <= sla * DAY))
        gaps = [t[i] - t[i - 1] for t in cohort if len(t) > i]
        stages.append({"stage": stage.key, "entered": entered[i],
                       "converted_from_previous_rate": entered[i] / entered[i - 1] if entered[i - 1] else None,
                       "drop_off": entered[i - 1] - entered[i] - waiting, "in_progress": waiting,
                       "median_seconds_from_previous": statistics.median(gaps) if gaps else None})
    return {"stages": stages, "overall_conversion_rate": entered[-1] / entered[0] if entered[0] else None}


def service_report(f: Funnel, attempts: Sequence[tuple[float, ...]], now: float) -> dict[str, Any]:
    """logic.report over the columns the report index keeps."""
    cohort = [t for t in attempts if t]
    gaps = np.full((len(cohort), len(f.stages)), np.nan)
    for row, t in enumerate(cohort):
        gaps[row, 1:len(t)] = np.diff(t)
    return report(f, np.array([len(t) for t in cohort], dtype=np.int64), np.array([t[0] for t in cohort]),
                  np.array([t[-1] for t in cohort]), gaps, now)


# --- hand-made cases -----------------------------------------------------------------------------

class TestWindow:
    def test_last_stage_exactly_the_window_after_the_first_counts(self) -> None:
        assert days(funnel(None, None, window=7), ev("a", 0, 0), ev("b", 7, 1)) == [0, 7]

    def test_a_second_over_the_window_does_not(self) -> None:
        assert days(funnel(None, None, window=7), ev("a", 0, 0), ev("b", 7, 1, seconds=1)) == [0]

    def test_the_window_runs_from_the_first_stage_not_the_previous(self) -> None:
        f = funnel(None, None, None, window=7)
        assert days(f, ev("a", 0, 0), ev("b", 4, 1), ev("c", 8, 2)) == [0, 4]

    def test_a_later_start_whose_window_reaches_further_counts(self) -> None:
        f = funnel(None, None, None, window=7)
        events = (ev("a", 0, 0), ev("b", 4, 1), ev("a2", 3, 0), ev("c", 10, 2))
        assert days(f, *events) == [3, 4, 10]


class TestEqualTimes:
    def test_stages_may_share_a_timestamp(self) -> None:
        assert days(funnel(None, None, None), ev("a", 1, 0), ev("b", 1, 1), ev("c", 1, 2)) == [1, 1, 1]

    def test_one_event_fills_one_stage_even_when_it_matches_two(self) -> None:
        assert days(funnel(None, None), ev("a", 1, 0, 1)) == [1]
        assert days(funnel(None, None), ev("a", 1, 0, 1), ev("b", 1, 0, 1)) == [1, 1]

    def test_one_order_fills_purchase_and_not_also_loyalty(self) -> None:
        walk = [lifecycle_event("p", 0, "page"), lifecycle_event("i", 1, "identify", traits={"email": "a@b"}),
                lifecycle_event("v", 2, "track", "Product Viewed"), lifecycle_event("o1", 3, "track", "Order Completed")]
        assert days(LIFECYCLE, *walk) == [0, 1, 2, 3]
        assert days(LIFECYCLE, *walk, lifecycle_event("o2", 3, "track", "Order Completed")) == [0, 1, 2, 3, 3]


class TestRepeatedAttempts:
    def test_the_attempt_that_gets_furthest_counts_even_if_it_starts_later(self) -> None:
        f = funnel(None, None, None, window=5)
        events = (ev("a1", 0, 0), ev("b1", 1, 1), ev("a2", 20, 0), ev("b2", 21, 1), ev("c2", 25, 2))
        assert days(f, *events) == [20, 21, 25]

    def test_among_equally_far_the_earliest_first_stage_counts(self) -> None:
        f = funnel(None, None)
        assert days(f, ev("a2", 3, 0), ev("b2", 4, 1), ev("a1", 1, 0), ev("b1", 9, 1)) == [1, 4]

    def test_with_the_same_first_stage_the_earliest_second_counts(self) -> None:
        f = funnel(None, None, None)
        events = (ev("a", 0, 0), ev("b-late", 5, 1), ev("b", 2, 1), ev("c", 6, 2), ev("c-early", 5.5, 2))
        assert days(f, *events) == [0, 2, 5.5]

    def test_furthest_beats_earliest_when_the_earliest_step_misses_a_stage_sla(self) -> None:
        f = funnel(None, None, {"max_days_from_previous": 3})
        assert days(f, ev("a", 0, 0), ev("b1", 1, 1), ev("b2", 5, 1), ev("c", 8, 2)) == [0, 5, 8]


class TestOrder:
    def test_a_later_stage_before_the_earlier_one_does_not_count(self) -> None:
        f = funnel(None, None)
        assert days(f, ev("b", 0, 1), ev("a", 1, 0)) == [1]

    def test_it_counts_once_the_later_stage_happens_again_afterwards(self) -> None:
        f = funnel(None, None)
        assert days(f, ev("b", 0, 1), ev("a", 1, 0), ev("b2", 2, 1)) == [1, 2]

    def test_a_stage_is_not_reached_by_skipping_the_one_before(self) -> None:
        assert days(funnel(None, None, None), ev("a", 0, 0), ev("c", 1, 2)) == [0]


class TestMaxDaysFromPrevious:
    def test_exactly_the_stage_window_after_the_previous_counts(self) -> None:
        f = funnel(None, {"max_days_from_previous": 2})
        assert days(f, ev("a", 0, 0), ev("b", 2, 1)) == [0, 2]

    def test_a_second_over_does_not(self) -> None:
        f = funnel(None, {"max_days_from_previous": 2})
        assert days(f, ev("a", 0, 0), ev("b", 2, 1, seconds=1)) == [0]

    def test_it_is_measured_from_the_previous_stage_not_the_first(self) -> None:
        f = funnel(None, None, {"max_days_from_previous": 3})
        assert days(f, ev("a", 0, 0), ev("b", 5, 1), ev("c", 7, 2)) == [0, 5, 7]

    def test_a_later_previous_step_keeps_the_stage_window_open(self) -> None:
        f = funnel(None, {"max_days_from_previous": 1})
        assert days(f, ev("a1", 0, 0), ev("a2", 3, 0), ev("b", 3.5, 1)) == [3, 3.5]

    def test_the_whole_funnel_window_still_applies(self) -> None:
        f = funnel(None, {"max_days_from_previous": 10}, window=5)
        assert days(f, ev("a", 0, 0), ev("b", 6, 1)) == [0]


class TestEventsMatchingSeveralStages:
    def test_each_event_fills_the_stage_the_attempt_needs(self) -> None:
        f = funnel(None, None, None)
        events = (ev("x", 0, 0, 2), ev("y", 1, 1), ev("z", 2, 0, 2))
        assert days(f, *events) == [0, 1, 2]

    def test_an_event_for_stages_one_and_two_needs_another_for_stage_two(self) -> None:
        f = funnel(None, None)
        assert days(f, ev("x", 0, 0, 1), ev("y", 0, 1)) == [0, 0]
        assert days(f, ev("x", 0, 0, 1), ev("y", 2, 0, 1)) == [0, 2]


def lifecycle_event(event_id: str, day: float, type_: str, name: str | None = None,
                    traits: dict[str, Any] | None = None) -> Matched:
    mask = LIFECYCLE.stage_mask(type_, name, event_document({}, traits or {}, {}))
    return Matched(T + day * DAY, event_id, mask)


class TestLifecycleMatches:
    @pytest.mark.parametrize(("type_", "name", "traits", "stages"), [
        ("page", "Home", {}, ["awareness"]),
        ("track", "Button Clicked", {}, ["awareness"]),
        ("track", "Signed Up", {}, ["awareness", "interest"]),
        ("identify", None, {"email": "ann@example.com"}, ["interest"]),
        ("identify", None, {"plan": "pro"}, []),
        ("screen", "Home", {}, []),
        ("track", "Product Viewed", {}, ["awareness", "consideration"]),
        ("track", "Product Added", {}, ["awareness", "consideration"]),
        ("track", "Lead Created", {}, ["awareness", "consideration"]),
        ("track", "Checkout Started", {}, ["awareness", "consideration"]),
        ("track", "Order Completed", {}, ["awareness", "purchase", "loyalty"]),
    ])
    def test_stage_mask(self, type_: str, name: str | None, traits: dict[str, Any], stages: list[str]) -> None:
        mask = LIFECYCLE.stage_mask(type_, name, event_document({}, traits, {}))
        assert [s.key for i, s in enumerate(LIFECYCLE.stages) if mask >> i & 1] == stages

    def test_batch_masks_agree_with_one_event_masks(self) -> None:
        """StageMasks (what recording a batch uses) works out type and name once per pair: the
        same (type, name) with and without the traits a `where` reads still differ."""
        masks = StageMasks(LIFECYCLE)
        for type_, name, traits in [("identify", None, {"email": "a@example.com"}), ("identify", None, {}),
                                    ("identify", None, {"email": "b@example.com"}), ("track", "Signed Up", {}),
                                    ("track", "Order Completed", {}), ("page", None, {}), ("screen", "Home", {})] * 2:
            document = event_document({}, traits, {})
            assert masks(type_, name, document) == LIFECYCLE.stage_mask(type_, name, document)

    def test_identify_without_email_does_not_make_interest(self) -> None:
        events = (lifecycle_event("p", 0, "page", "Home"), lifecycle_event("i", 1, "identify", traits={"plan": "pro"}))
        assert days(LIFECYCLE, *events) == [0]

    def test_the_window_is_90_days(self) -> None:
        events = (lifecycle_event("p", 0, "page", "Home"), lifecycle_event("s", 90, "track", "Signed Up"),
                  lifecycle_event("v", 90, "track", "Product Viewed", ), lifecycle_event("o", 90.5, "track", "Order Completed"))
        assert days(LIFECYCLE, *events) == [0, 90, 90]


# --- random cases against the reference ----------------------------------------------------------

def random_case(rng: random.Random) -> tuple[Funnel, list[Matched]]:
    k = rng.randint(2, 4)
    stages = [{"max_days_from_previous": rng.choice([0.5, 1, 2])} if i and rng.random() < 0.3 else None for i in range(k)]
    f = funnel(*stages, window=rng.choice([1, 2, 3, 5]))
    events = [Matched(T + rng.randint(0, 16) * DAY / 4, f"e{n}", rng.randint(1, 2**k - 1)) for n in range(rng.randint(1, 7))]
    return f, events


@pytest.mark.parametrize("seed", range(8))
def test_counted_attempt_matches_the_brute_force_reference(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        f, events = random_case(rng)
        expected = reference_attempt(f, events)
        shuffled = rng.sample(events, len(events))
        assert counted_attempt(f, shuffled).times == expected, (f, events)


@pytest.mark.parametrize("seed", range(4))
def test_the_usual_customer_takes_the_short_way_to_the_same_attempt(seed: int) -> None:
    """Without per-stage windows and with every event at its own time, counted_attempt takes the
    earliest event of each stage from each start: the attempt is the search's, and the reference's."""
    rng = random.Random(seed)
    for _ in range(200):
        k = rng.randint(1, 5)
        f = funnel(*[None] * k, window=rng.choice([1, 2, 3, 5, 30]))
        times = rng.sample(range(60), rng.randint(0, 7))
        events = [Matched(T + t * DAY / 4, f"e{rng.randint(0, 99)}-{n}", rng.randint(1, 2**k - 1)) for n, t in enumerate(times)]
        in_order = sorted(events, key=lambda e: (e.at, e.event_id))
        got = counted_attempt(f, rng.sample(events, len(events)))
        assert got == _earliest_attempt(f, in_order) == _searched_attempt(f, in_order), (f, events)
        assert got.times == reference_attempt(f, events)


class TestReport:
    def test_counts_rates_and_an_even_median(self) -> None:
        f = funnel(None, None, None, window=10)
        attempts = [(0, 2 * DAY), (0, 4 * DAY, 5 * DAY), (0,), (DAY, 2 * DAY), (0, 10 * DAY)]
        got = service_report(f, attempts, now=30 * DAY)
        assert got == {"stages": [
            {"stage": "s0", "entered": 5, "converted_from_previous_rate": None, "drop_off": 0, "in_progress": 0,
             "median_seconds_from_previous": None},
            {"stage": "s1", "entered": 4, "converted_from_previous_rate": 0.8, "drop_off": 1, "in_progress": 0,
             "median_seconds_from_previous": 3 * DAY},  # gaps 1, 2, 4, 10 days: (2 + 4) / 2
            {"stage": "s2", "entered": 1, "converted_from_previous_rate": 0.25, "drop_off": 3, "in_progress": 0,
             "median_seconds_from_previous": DAY}],
            "overall_conversion_rate": 0.2}

    def test_an_open_window_is_in_progress_not_dropped(self) -> None:
        f = funnel(None, None, window=10)
        attempts = [(0,), (5 * DAY,), (0, DAY)]
        stage = service_report(f, attempts, now=10 * DAY)["stages"][1]  # (0,): exactly at its window's end
        assert (stage["entered"], stage["in_progress"], stage["drop_off"]) == (1, 2, 0)
        stage = service_report(f, attempts, now=10 * DAY + 1)["stages"][1]
        assert (stage["entered"], stage["in_progress"], stage["drop_off"]) == (1, 1, 1)

    def test_a_closed_stage_window_drops_even_inside_the_funnel_window(self) -> None:
        f = funnel(None, None, {"max_days_from_previous": 1}, window=30)
        stage = service_report(f, [(0, 2 * DAY)], now=3 * DAY + 1)["stages"][2]
        assert (stage["in_progress"], stage["drop_off"]) == (0, 1)
        stage = service_report(f, [(0, 2 * DAY)], now=3 * DAY)["stages"][2]
        assert (stage["in_progress"], stage["drop_off"]) == (1, 0)

    def test_rates_over_no_customers_are_null(self) -> None:
        f = funnel(None, None, None)
        assert service_report(f, [], now=0) == reference_report(f, [], now=0)
        got = service_report(f, [(0,)], now=100 * DAY)
        assert [s["converted_from_previous_rate"] for s in got["stages"]] == [None, 0.0, None]
        assert service_report(f, [], now=0)["overall_conversion_rate"] is None

    @pytest.mark.parametrize("seed", range(5))
    def test_random_cohorts_match_the_reference(self, seed: int) -> None:
        rng = random.Random(1000 + seed)
        for _ in range(20):
            f, _ = random_case(rng)
            attempts = [reference_attempt(f, random_case_events(rng, f)) for _ in range(rng.randint(0, 12))]
            now = T + rng.randint(0, 40) * DAY / 4
            assert service_report(f, attempts, now) == reference_report(f, attempts, now), attempts


def random_case_events(rng: random.Random, f: Funnel) -> list[Matched]:
    k = len(f.stages)
    return [Matched(T + rng.randint(0, 16) * DAY / 4, f"e{n}", rng.randint(1, 2**k - 1)) for n in range(rng.randint(1, 6))]
