"""The rule language (shared.rules) with custom segments' fields, without a store: parsing (and the path a bad rule's error
names), evaluating over columns (lists, and numpy arrays for numbers), explaining one customer."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from services.segmentation.rules import parse
from shared import rules
from shared.rules import (
    MISSING,
    Behaviour,
    EventFacts,
    RuleError,
    evaluate,
    explain,
    summary,
    to_json,
)

NAN = float("nan")


class Rows:
    """Customers as columns: a list per field (MISSING where absent) or a float array (NaN);
    behaviour counts by event name."""

    def __init__(self, counts: dict[str, list[int]] | None = None, **columns: Any) -> None:
        self._columns = {k.replace("__", "."): v for k, v in columns.items()}
        self._counts = counts or {}
        self.size = len(next(iter([*self._columns.values(), *self._counts.values()])))

    def column(self, field: str) -> Any:
        return self._columns[field]

    def counts(self, behaviour: Behaviour) -> np.ndarray:
        return np.array(self._counts[behaviour.event], dtype=np.int64)


def matches(raw: dict[str, Any], facts: Any) -> list[bool]:
    result: list[bool] = evaluate(parse(raw), facts).tolist()
    return result


def trait(op: str, value: Any) -> dict[str, Any]:
    return {"field": "traits.x", "op": op, "value": value}


class TestOperators:
    @pytest.mark.parametrize(("op", "value", "actual", "expected"), [
        ("eq", 3, 3, True), ("eq", 3, 3.0, True), ("eq", 3, 4, False), ("eq", "a", "A", False),
        ("ne", 3, 4, True), ("ne", 3, 3, False),
        ("gt", 3, 4, True), ("gt", 3, 3, False),
        ("gte", 3, 3, True), ("gte", 3, 2.9, False),
        ("lt", 3, 2, True), ("lt", 3, 3, False),
        ("lte", 3, 3, True), ("lte", 3, 3.1, False),
        ("in", [1, 3], 3, True), ("in", [1, 3], 2, False),
        ("not_in", [1, 3], 2, True), ("not_in", [1, 3], 1, False),
        ("contains", "ELL", "hello", True), ("contains", "xyz", "hello", False),
        ("exists", True, 0, True), ("exists", False, 0, False), ("exists", True, "", True),
        ("between", [2, 4], 3, True), ("between", [2, 4], 4.5, False),
    ])
    def test_each_operator_on_a_present_value(self, op: str, value: Any, actual: Any, expected: bool) -> None:
        assert matches(trait(op, value), Rows(traits__x=[actual])) == [expected]

    @pytest.mark.parametrize("absent", [MISSING, None], ids=["missing", "null"])
    @pytest.mark.parametrize(("op", "value", "expected"), [
        ("eq", 1, False), ("ne", 1, True), ("gt", 1, False), ("gte", 1, False), ("lt", 1, False),
        ("lte", 1, False), ("in", [1], False), ("not_in", [1], True), ("contains", "a", False),
        ("exists", True, False), ("exists", False, True), ("between", [0, 9], False),
    ])
    def test_a_missing_value_satisfies_only_ne_not_in_and_exists_false(
        self, op: str, value: Any, expected: bool, absent: Any
    ) -> None:
        assert matches(trait(op, value), Rows(traits__x=[absent])) == [expected]


NUMBERS = [NAN, 1.0, 2.0, 3.0, 2.5]


class TestNumberColumns:
    @pytest.mark.parametrize(("op", "value", "expected"), [
        ("eq", 2, [0, 0, 1, 0, 0]), ("eq", 2.5, [0, 0, 0, 0, 1]), ("ne", 2, [1, 1, 0, 1, 1]),
        ("gt", 2, [0, 0, 0, 1, 1]), ("gte", 2, [0, 0, 1, 1, 1]), ("lt", 2, [0, 1, 0, 0, 0]),
        ("lte", 2, [0, 1, 1, 0, 0]), ("in", [1, 3], [0, 1, 0, 1, 0]), ("not_in", [1, 3], [1, 0, 1, 0, 1]),
        ("exists", True, [0, 1, 1, 1, 1]), ("exists", False, [1, 0, 0, 0, 0]),
        ("between", [2, 3], [0, 0, 1, 1, 1]),
    ])
    def test_numpy_and_per_value_paths_agree(self, op: str, value: Any, expected: list[int]) -> None:
        raw = {"field": "revenue", "op": op, "value": value}
        as_array = matches(raw, Rows(revenue=np.array(NUMBERS)))
        as_list = matches(raw, Rows(revenue=[MISSING if math.isnan(v) else v for v in NUMBERS]))
        assert as_array == as_list == [bool(e) for e in expected]

    def test_contains_on_a_number_column_agrees_with_the_per_value_path(self) -> None:
        as_list = rules.test_column("contains", [MISSING, 1.0, 2.0], 2, 3).tolist()
        assert rules.test_column("contains", np.array([NAN, 1.0, 2.0]), 2, 3).tolist() == as_list == [False] * 3


class TestNumbersAndText:
    @pytest.mark.parametrize(("op", "value", "actual", "expected"), [
        ("gt", "2024-05-01", "2024-05-02", True), ("gt", "2024-05-01", "2024-04-30", False),
        ("gt", "2024-05-01", "2024-10-01", True), ("gt", "9", "10", False),  # text order, not numbers
        ("gt", 9, "10", False), ("lt", "9", 10, False),
        ("between", ["2024-01-01", "2024-06-30"], "2024-06-30", True),
        ("between", ["2024-01-01", "2024-06-30"], "2024-07-01", False),
        ("eq", 1, "1", False), ("eq", "1", 1, False), ("in", ["1"], 1, False), ("ne", 1, "1", True),
        ("eq", 1, True, False), ("eq", True, 1, False), ("eq", True, True, True), ("in", [1, 0], False, False),
        ("gt", 0, True, False),
        ("contains", "gmail", "Ann@GMAIL.com", True), ("contains", "vip", ["vip", "beta"], True),
        ("contains", "vi", ["vip", "beta"], False), ("contains", 1, [1, 2], True), ("contains", "1", [1, 2], False),
        ("contains", 1, "a1", False),
        ("between", [2, 4], 2, True), ("between", [2, 4], 4, True), ("between", [2, 4], 1.99, False),
        ("between", ["a", "c"], "c", True),
    ])
    def test_comparison(self, op: str, value: Any, actual: Any, expected: bool) -> None:
        assert matches(trait(op, value), Rows(traits__x=[actual])) == [expected]


PRO = {"field": "traits.plan", "op": "eq", "value": "pro"}
BIG = {"field": "revenue", "op": "gte", "value": 100}
EMAIL = {"field": "channel", "op": "eq", "value": "email"}
ORDERS = {"event": "Order Completed", "op": "gte", "value": 2, "within_days": 30}


class TestCombinations:
    facts = Rows(traits__plan=["pro", "pro", "free", MISSING], revenue=[150.0, 50.0, 150.0, MISSING],
                 channel=["email", "search", "email", MISSING], counts={"Order Completed": [2, 0, 3, 1]})

    @pytest.mark.parametrize(("raw", "expected"), [
        ({"all": [PRO, BIG]}, [True, False, False, False]),
        ({"any": [PRO, BIG]}, [True, True, True, False]),
        ({"not": PRO}, [False, False, True, True]),
        ({"all": [EMAIL, {"not": PRO}]}, [False, False, True, False]),
        ({"any": [{"all": [PRO, {"not": BIG}]}, ORDERS]}, [True, True, True, False]),
        ({"not": {"any": [EMAIL, ORDERS]}}, [False, True, False, True]),
        ({"all": [ORDERS, {"not": {"all": [PRO, EMAIL]}}]}, [False, False, True, False]),
    ])
    def test_all_any_not(self, raw: dict[str, Any], expected: list[bool]) -> None:
        assert matches(raw, self.facts) == expected

    def test_a_behaviour_where_filters_event_properties(self) -> None:
        where = parse({"event": "Order Completed", "within_days": 30, "where": {"any": [
            {"field": "plan", "op": "eq", "value": "pro"}, {"field": "properties.total", "op": "gt", "value": 10}]}}).where
        events = EventFacts([{"plan": "pro"}, {"total": 11}, {"total": 10}, {"plan": "PRO"}, {}])
        assert where is not None and evaluate(where, events).tolist() == [True, True, False, False, False]


RULE = {"all": [PRO, {"not": BIG}, {"any": [{**ORDERS, "where": {"field": "total", "op": "gt", "value": 5}}, EMAIL]}]}


class TestExplain:
    def test_every_node_says_whether_it_held_and_leaves_give_the_actual_value(self) -> None:
        facts = Rows(traits__plan=["pro"], revenue=np.array([50.0]), channel=[MISSING], counts={"Order Completed": [3]})
        assert explain(parse(RULE), facts) == {"matched": True, "all": [
            {**PRO, "actual": "pro", "matched": True},
            {"not": {**BIG, "actual": 50.0, "matched": False}, "matched": True},
            {"any": [{**ORDERS, "where": {"field": "total", "op": "gt", "value": 5}, "actual": 3, "matched": True},
                     {**EMAIL, "actual": None, "matched": False}], "matched": True},
        ]}

    def test_the_summary_of_a_match_names_what_held_with_the_values(self) -> None:
        facts = Rows(traits__plan=["pro"], revenue=[50.0], channel=["email"], counts={"Order Completed": [1]})
        assert summary(explain(parse(RULE), facts)) == (
            "traits.plan eq 'pro' (is 'pro'); not revenue gte 100 (is 50.0); channel eq 'email' (is 'email')")

    def test_the_summary_of_a_failure_names_what_failed_with_not(self) -> None:
        facts = Rows(traits__plan=["free"], revenue=[500.0], channel=["email"], counts={"Order Completed": [0]})
        assert summary(explain(parse(RULE), facts)) == "not traits.plan eq 'pro' (is 'free'); revenue gte 100 (is 500.0)"
        failed_any = {"any": [ORDERS, {"field": "traits.tags", "op": "in", "value": ["a", "b"]}]}
        facts = Rows(traits__tags=[MISSING], counts={"Order Completed": [1]})
        assert summary(explain(parse(failed_any), facts)) == (
            "not 'Order Completed' 1 time(s) in 30 days (gte 2); not traits.tags in ['a', 'b'] (is None)")

    def test_the_summary_shows_a_number_column_value_as_a_plain_number(self) -> None:
        facts = Rows(revenue=np.array([250.0]))
        assert summary(explain(parse(BIG), facts)) == "revenue gte 100 (is 250.0)"


DEEP: dict[str, Any] = EMAIL
for _ in range(21):
    DEEP = {"not": DEEP}
NESTED_33: Any = 1
for _ in range(33):
    NESTED_33 = {"a": NESTED_33}


class TestParseErrors:
    @pytest.mark.parametrize(("raw", "where"), [
        ({"all": [PRO, {"field": "plan", "op": "eq", "value": 1}]}, "rule.all[1].field"),     # unknown field
        ({"field": "rfm.x", "op": "eq", "value": 1}, "rule.field"),
        ({"field": "traits.", "op": "eq", "value": 1}, "rule.field"),
        ({"all": [PRO, {"field": "traits.a", "op": "like", "value": 1}]}, "rule.all[1].op"),  # unknown op
        ({"any": [{"field": "traits.a", "op": "eq"}]}, "rule.any[0].value"),                 # missing value
        ({"field": "traits.a", "op": "in", "value": "a"}, "rule.value"),
        ({"field": "traits.a", "op": "not_in", "value": []}, "rule.value"),
        ({"field": "traits.a", "op": "between", "value": [1, 2, 3]}, "rule.value"),
        ({"field": "traits.a", "op": "between", "value": [1, "9"]}, "rule.value"),
        ({"field": "traits.a", "op": "between", "value": [5, 1]}, "rule.value"),              # low > high
        ({"field": "traits.a", "op": "gt", "value": [1]}, "rule.value"),
        ({"field": "traits.a", "op": "gt", "value": True}, "rule.value"),
        ({"field": "traits.a", "op": "exists", "value": "yes"}, "rule.value"),
        ({"field": "revenue", "op": "gt", "value": "100"}, "rule.value"),
        ({"field": "lifecycle", "op": "eq", "value": "vip"}, "rule.value"),
        ({"field": "frequency_tier", "op": "in", "value": ["high", "huge"]}, "rule.value"),
        ({"field": "lifecycle", "op": "gt", "value": "new"}, "rule.op"),
        ({"not": {"field": "revenue", "op": "contains", "value": 1}}, "rule.not.op"),         # contains on a number
        ({"not": {"field": "", "op": "eq", "value": 1}}, "rule.not.field"),
        ({**PRO, "all": [PRO]}, "rule"),                                                      # two kinds
        ({"all": [PRO], "any": [PRO]}, "rule"),
        ({"op": "eq", "value": 1}, "rule"),
        ({**PRO, "extra": 1}, "rule"),
        ({"all": []}, "rule.all"),
        ({"any": PRO}, "rule.any"),
        ([PRO], "rule"),                                                                      # not an object
        ({"not": "traits.a"}, "rule.not"),
        ({"event": "", "within_days": 1}, "rule.event"),
        ({"event": "Signed Up"}, "rule.within_days"),
        ({"event": "Signed Up", "within_days": 0}, "rule.within_days"),
        ({"event": "Signed Up", "within_days": 366}, "rule.within_days"),                    # above the max
        ({"event": "Signed Up", "within_days": 30, "value": -1}, "rule.value"),
        ({"event": "Signed Up", "within_days": 30, "value": 1.5}, "rule.value"),
        ({"event": "Signed Up", "within_days": 30, "value": 2**53}, "rule.value"),
        ({"field": "traits.a", "op": "eq", "value": 2**53}, "rule.value"),                    # past exact integers
        ({"field": "traits.a", "op": "lt", "value": -1e16}, "rule.value"),
        ({"field": "traits.a", "op": "eq", "value": {"b": [[{"c": 10**30}]]}}, "rule.value"),
        ({"field": "traits.a", "op": "eq", "value": NESTED_33}, "rule.value"),                # nested too deep
        ({"event": "Signed Up", "within_days": 30, "op": "gt"}, "rule.op"),
        ({"event": "A", "within_days": 1, "where": {"event": "B", "within_days": 1}}, "rule.where"),
        ({"event": "A", "within_days": 1, "where": {"field": "plan", "op": "like", "value": 1}}, "rule.where.op"),
        ({"any": [{"event": "A", "within_days": 1, "where": {"all": [{"field": "properties", "op": "eq", "value": 1}]}}]},
         "rule.any[0].where.all[0].field"),
        (DEEP, "rule" + ".not" * 21),                                                         # too deep
        ({"any": [PRO] * 100}, "rule.any[99]"),                                               # too many parts
    ])
    def test_a_bad_rule_names_its_bad_part(self, raw: Any, where: str) -> None:
        with pytest.raises(RuleError) as caught:
            parse(raw, max_within_days=365)
        assert caught.value.where == where
        assert str(caught.value).startswith(f"{where}: ") and caught.value.message

    def test_limits_are_inclusive(self) -> None:
        parse({"event": "Signed Up", "within_days": 365}, max_within_days=365)
        parse({"field": "traits.a", "op": "in", "value": [2**53 - 1, -(2**53 - 1), 1e15]})  # I-JSON's exact integers
        parse({"event": "Signed Up", "within_days": 1, "value": 2**53 - 1}, max_within_days=365)
        value: Any = 1
        for _ in range(32):
            value = {"a": value}
        parse({"field": "traits.a", "op": "eq", "value": value})
        parse(DEEP["not"])
        parse({"any": [PRO] * 99})


class TestToJson:
    def test_a_rule_with_every_kind_of_node_round_trips(self) -> None:
        raw = {"any": [
            {"all": [PRO, {"field": "traits.address.city", "op": "in", "value": ["Lyon", "Paris"]},
                     {"field": "revenue", "op": "between", "value": [10, 99.5]}]},
            {"not": {"field": "channel", "op": "exists", "value": False}},
            {"event": "Order Completed", "where": {"not": {"field": "total", "op": "lt", "value": 5}}, "op": "eq",
             "value": 0, "within_days": 7.5},
            {"event": "Signed Up", "op": "lte", "value": 3, "within_days": 30},
        ]}
        assert to_json(parse(raw)) == raw
        assert parse(to_json(parse(raw))) == parse(raw)

    def test_defaults_are_filled_in(self) -> None:
        raw = {"all": [{"field": "traits.vip", "op": "exists"}, {"event": "Signed Up", "within_days": 30, "where": None}]}
        assert to_json(parse(raw)) == {"all": [{"field": "traits.vip", "op": "exists", "value": True},
                                               {"event": "Signed Up", "op": "gte", "value": 1, "within_days": 30}]}
