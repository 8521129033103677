"""The rule language of the contract (docs/api.md section 3): custom segments' rules, and the `where`
over event properties of behaviours and funnel stages. Pure: no I/O, no clock.

A rule is `{"all": [...]}`, `{"any": [...]}`, `{"not": rule}`, a condition
`{"field": F, "op": OP, "value": V}` or a behaviour `{"event": NAME, "where": rule?, "op": "gte",
"value": N, "within_days": D}`. `parse` turns the JSON into a tree or raises `RuleError` naming
the bad part by its path (`rule.all[1].op`); which fields exist is the caller's `Vocabulary`
(a segment's profile fields, or an event's properties). `evaluate` answers for many customers at once (a
column per field, numpy for numbers); `explain` answers for one with the values that decided it.

Semantics, as PostHog's property filters: a missing value satisfies only `ne`, `not_in` and
`exists: false`; `gt`/`lt`/`between` compare numbers with numbers and text with text (so ISO
dates work); `contains` is a case-insensitive substring of text, or an element of a list.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "exists", "between")
BEHAVIOUR_OPS = ("gte", "lte", "eq")
MAX_DEPTH = 20
MAX_CONDITIONS = 100
# Numbers in a rule stay within the integers a JSON number holds exactly everywhere (I-JSON,
# RFC 7493): larger ones no store, JSON writer or float column compares faithfully. A value
# compared with (an object, a list) nests at most MAX_VALUE_NESTING levels.
MAX_NUMBER = 2**53 - 1
MAX_VALUE_NESTING = 32


class Missing:
    """The value of a field the customer does not have."""

    def __repr__(self) -> str:
        return "missing"


MISSING: Any = Missing()


class RuleError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Behaviour:
    event: str
    where: Rule | None
    op: str
    count: int
    within_days: float


@dataclass(frozen=True)
class All:
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class AnyOf:
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Not:
    rule: Rule


Rule = Condition | Behaviour | All | AnyOf | Not


def _property_field(field: str, where: str) -> None:
    """Event properties: any name (`plan` or `properties.plan`)."""
    if field in ("properties", "properties."):
        raise RuleError(where, "name a property, e.g. 'properties.plan'")


@dataclass(frozen=True)
class Vocabulary:
    """The fields a rule may use: `check(field, where)` raises RuleError for an unknown one;
    number and choice fields get their values checked too. Behaviours are allowed only where
    the rule is about customers (they count a customer's events)."""

    check: Callable[[str, str], None] = _property_field
    numbers: frozenset[str] = frozenset()
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    behaviours: bool = False


PROPERTIES = Vocabulary()


# --- parsing -------------------------------------------------------------------------------------

def parse(raw: Any, vocabulary: Vocabulary = PROPERTIES, max_within_days: float = math.inf, where: str = "rule") -> Rule:
    """The rule tree of `raw`, or a RuleError that names the bad part (paths start at `where`)."""
    counter = [0]
    return _parse(raw, where, vocabulary, max_within_days, counter, 0)


def _parse(raw: Any, where: str, vocabulary: Vocabulary, max_days: float, counter: list[int], depth: int) -> Rule:
    if depth > MAX_DEPTH:
        raise RuleError(where, f"rules nest at most {MAX_DEPTH} deep")
    if not isinstance(raw, dict):
        raise RuleError(where, f"a rule is a JSON object, not {_json_type(raw)}")
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise RuleError(where, f"a rule has at most {MAX_CONDITIONS} parts")
    kinds = [k for k in ("all", "any", "not", "field", "event") if k in raw]
    if len(kinds) != 1:
        raise RuleError(where, "give exactly one of 'all', 'any', 'not', 'field' (a condition) or 'event' (a behaviour)")
    kind = kinds[0]
    if kind in ("all", "any"):
        _only(raw, {kind}, where)
        items = raw[kind]
        if not isinstance(items, list) or not items:
            raise RuleError(f"{where}.{kind}", "a non-empty list of rules")
        rules = tuple(_parse(r, f"{where}.{kind}[{i}]", vocabulary, max_days, counter, depth + 1) for i, r in enumerate(items))
        return All(rules) if kind == "all" else AnyOf(rules)
    if kind == "not":
        _only(raw, {"not"}, where)
        return Not(_parse(raw["not"], f"{where}.not", vocabulary, max_days, counter, depth + 1))
    if kind == "event":
        if not vocabulary.behaviours:
            raise RuleError(where, "a behaviour cannot sit inside a 'where' (it filters one event's properties)")
        return _behaviour(raw, where, max_days, counter, depth)
    return _condition(raw, where, vocabulary)


def _only(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    if extra := sorted(set(raw) - allowed):
        raise RuleError(where, f"unexpected key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(allowed))}")


def _condition(raw: dict[str, Any], where: str, vocabulary: Vocabulary) -> Condition:
    _only(raw, {"field", "op", "value"}, where)
    field = raw["field"]
    if not isinstance(field, str) or not field:
        raise RuleError(f"{where}.field", "a field name (text)")
    vocabulary.check(field, f"{where}.field")
    op = raw.get("op")
    if op not in OPS:
        raise RuleError(f"{where}.op", f"{op!r} is not an operator; use one of {', '.join(OPS)}")
    if op == "exists":
        value = raw.get("value", True)
        if not isinstance(value, bool):
            raise RuleError(f"{where}.value", "'exists' takes true or false")
        return Condition(field, op, value)
    if "value" not in raw:
        raise RuleError(f"{where}.value", f"'{op}' needs a value")
    _check_storable(raw["value"], f"{where}.value")
    value = _value(raw["value"], op, f"{where}.value")
    if field in vocabulary.numbers:
        _check_numbers(field, op, value, f"{where}.value")
    elif field in vocabulary.choices:
        _check_choices(field, op, value, vocabulary.choices[field], f"{where}.value")
    return Condition(field, op, value)


def _value(value: Any, op: str, where: str) -> Any:
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise RuleError(where, f"'{op}' takes a non-empty list")
        return tuple(value)
    if op == "between":
        if not (isinstance(value, list) and len(value) == 2 and all(_orderable(v) for v in value)
                and _same_kind(value[0], value[1])):
            raise RuleError(where, "'between' takes [low, high], two numbers or two texts (both ends included)")
        if value[0] > value[1]:
            raise RuleError(where, f"'between' low {value[0]!r} is above high {value[1]!r}")
        return tuple(value)
    if op in ("gt", "gte", "lt", "lte") and not _orderable(value):
        raise RuleError(where, f"'{op}' compares with a number or a text, not {_json_type(value)}")
    if op == "contains" and isinstance(value, (dict, list)):
        raise RuleError(where, f"'contains' looks for a text or a single value, not {_json_type(value)}")
    return value


def _check_numbers(field: str, op: str, value: Any, where: str) -> None:
    if op == "contains":
        raise RuleError(where.rsplit(".", 1)[0] + ".op", f"{field} is a number: 'contains' does not apply")
    values = value if isinstance(value, tuple) else (value,)
    if op != "exists" and not all(is_number(v) for v in values):
        raise RuleError(where, f"{field} is a number; compare it with numbers")


def _check_choices(field: str, op: str, value: Any, allowed: tuple[str, ...], where: str) -> None:
    if op not in ("eq", "ne", "in", "not_in"):
        raise RuleError(where.rsplit(".", 1)[0] + ".op", f"{field} is one of a fixed set: use eq, ne, in, not_in or exists")
    for v in value if isinstance(value, tuple) else (value,):
        if v not in allowed:
            raise RuleError(where, f"{v!r} is not a {field}; one of {', '.join(allowed)}")


def _behaviour(raw: dict[str, Any], where: str, max_days: float, counter: list[int], depth: int) -> Behaviour:
    _only(raw, {"event", "where", "op", "value", "within_days"}, where)
    event = raw["event"]
    if not isinstance(event, str) or not event:
        raise RuleError(f"{where}.event", "the event's name (text), e.g. 'Order Completed'")
    op = raw.get("op", "gte")
    if op not in BEHAVIOUR_OPS:
        raise RuleError(f"{where}.op", f"a behaviour counts events: use one of {', '.join(BEHAVIOUR_OPS)}")
    count = raw.get("value", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_NUMBER:
        raise RuleError(f"{where}.value", f"how many times: a whole number from 0 to {MAX_NUMBER}")
    days: Any = raw.get("within_days")
    if not is_number(days) or not 0 < days <= max_days:
        limit = f" and at most {max_days:g}" if math.isfinite(max_days) else ""
        raise RuleError(f"{where}.within_days", f"a number of days above 0{limit}")
    condition = None
    if raw.get("where") is not None:
        condition = _parse(raw["where"], f"{where}.where", PROPERTIES, max_days, counter, depth + 1)
    return Behaviour(event, condition, op, count, days)  # days as written: 30 stays 30


def _check_storable(value: Any, where: str) -> None:
    """Every number within +-MAX_NUMBER, nesting within MAX_VALUE_NESTING (a loop: the body may
    nest deeper than Python's stack)."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level == MAX_VALUE_NESTING:
                raise RuleError(where, f"a value nests objects and lists at most {MAX_VALUE_NESTING} levels deep")
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and not abs(item) <= MAX_NUMBER:
            raise RuleError(where, f"numbers in a rule lie between -{MAX_NUMBER} and {MAX_NUMBER}; "
                                   f"{_short(item)} does not")


def _short(number: float) -> str:
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def _orderable(value: Any) -> bool:
    return is_number(value) or isinstance(value, str)


def _same_kind(a: Any, b: Any) -> bool:
    return is_number(a) == is_number(b)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a text", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def fields(rule: Rule) -> set[str]:
    """Every profile field a rule reads (behaviours not included)."""
    if isinstance(rule, Condition):
        return {rule.field}
    if isinstance(rule, Behaviour):
        return set()
    children = rule.rules if isinstance(rule, (All, AnyOf)) else (rule.rule,)
    return set().union(*(fields(r) for r in children))


def behaviours(rule: Rule) -> list[Behaviour]:
    if isinstance(rule, Behaviour):
        return [rule]
    if isinstance(rule, Condition):
        return []
    children = rule.rules if isinstance(rule, (All, AnyOf)) else (rule.rule,)
    return [b for r in children for b in behaviours(r)]


# --- evaluation ----

def lookup(document: dict[str, Any], path: str) -> Any:
    """`a.b` in a JSON object: the key "a.b" itself if present, else b inside a; MISSING if neither."""
    if path in document:
        return document[path]
    head, dot, rest = path.partition(".")
    if dot and isinstance(inner := document.get(head), dict):
        return lookup(inner, rest)
    return MISSING


class EventFacts:
    """Events' properties, a row each, for a rule over properties (`plan` or `properties.plan`)."""

    def __init__(self, properties: list[dict[str, Any]]) -> None:
        self.size = len(properties)
        self._properties = properties

    def column(self, field: str) -> Sequence[Any]:
        path = field.removeprefix("properties.")
        return [lookup(p, path) for p in self._properties]

    def counts(self, behaviour: Behaviour) -> NDArray[np.int64]:
        raise AssertionError("parse() keeps behaviours out of a rule over properties")


def matches(rule: Rule, properties: dict[str, Any]) -> bool:
    """One event's properties against a rule over properties."""
    return bool(evaluate(rule, EventFacts([properties]))[0])


class Facts(Protocol):
    """What a rule is evaluated over: `size` rows (customers or events), a column per field."""

    size: int

    def column(self, field: str) -> Sequence[Any] | NDArray[np.float64]: ...

    def counts(self, behaviour: Behaviour) -> NDArray[np.int64]: ...


Mask = NDArray[np.bool_]


def evaluate(rule: Rule, facts: Facts) -> Mask:
    """Which rows satisfy the rule."""
    if isinstance(rule, All):
        mask: Mask = np.logical_and.reduce([evaluate(r, facts) for r in rule.rules])
        return mask
    if isinstance(rule, AnyOf):
        mask = np.logical_or.reduce([evaluate(r, facts) for r in rule.rules])
        return mask
    if isinstance(rule, Not):
        return ~evaluate(rule.rule, facts)
    if isinstance(rule, Behaviour):
        return _count_test(rule.op, facts.counts(rule), rule.count)
    return test_column(rule.op, facts.column(rule.field), rule.value, facts.size)


def explain(rule: Rule, facts: Facts) -> dict[str, Any]:
    """The rule as a tree with, at each part, whether it held for the (one-row) facts and, at each
    condition, the customer's value: why the customer is in the segment, or not."""
    matched = bool(evaluate(rule, facts)[0])
    if isinstance(rule, (All, AnyOf)):
        kind = "all" if isinstance(rule, All) else "any"
        return {kind: [explain(r, facts) for r in rule.rules], "matched": matched}
    if isinstance(rule, Not):
        return {"not": explain(rule.rule, facts), "matched": matched}
    if isinstance(rule, Behaviour):
        return {"event": rule.event, **({"where": to_json(rule.where)} if rule.where else {}), "op": rule.op,
                "value": rule.count, "within_days": rule.within_days, "actual": int(facts.counts(rule)[0]),
                "matched": matched}
    actual = facts.column(rule.field)[0]
    return {"field": rule.field, "op": rule.op, "value": _plain(rule.value),
            "actual": None if actual is MISSING or _is_nan(actual) else _plain(actual), "matched": matched}


def summary(explained: dict[str, Any]) -> str:
    """One line for the history: the conditions that held, with the customer's values."""
    parts: list[str] = []

    def walk(node: dict[str, Any], negated: bool) -> None:
        if "all" in node or "any" in node:
            for child in node.get("all") or node["any"]:
                if child["matched"] != negated:
                    walk(child, negated)
        elif "not" in node:
            walk(node["not"], not negated)
        elif "event" in node:
            parts.append(f"{'not ' if negated else ''}'{node['event']}' {node['actual']} time(s) in {node['within_days']:g} days "
                         f"({node['op']} {node['value']})")
        else:
            parts.append(f"{'not ' if negated else ''}{node['field']} {node['op']} {node['value']!r} "
                         f"(is {node['actual']!r})")

    walk(explained, not explained["matched"])  # an exit names the parts that failed
    return "; ".join(parts) or "rule matched"


def to_json(rule: Rule) -> dict[str, Any]:
    """The rule back as the JSON a user wrote (normalised: defaults filled in)."""
    if isinstance(rule, All):
        return {"all": [to_json(r) for r in rule.rules]}
    if isinstance(rule, AnyOf):
        return {"any": [to_json(r) for r in rule.rules]}
    if isinstance(rule, Not):
        return {"not": to_json(rule.rule)}
    if isinstance(rule, Behaviour):
        return {"event": rule.event, **({"where": to_json(rule.where)} if rule.where else {}), "op": rule.op,
                "value": rule.count, "within_days": rule.within_days}
    return {"field": rule.field, "op": rule.op, "value": _plain(rule.value)}


def _plain(value: Any) -> Any:
    """JSON-ready: a list for a tuple, a Python number for a numpy one (2.0, not np.float64(2.0))."""
    if isinstance(value, np.generic):
        return value.item()
    return list(value) if isinstance(value, tuple) else value


def _count_test(op: str, counts: NDArray[np.int64], n: int) -> Mask:
    tested: Mask = {"gte": counts >= n, "lte": counts <= n, "eq": counts == n}[op]
    return tested


class Coded(Sequence[Any]):
    """A column as its distinct values and, per row, which one (as a category): a condition is
    tested once per distinct value, then spread to the rows by their codes."""

    def __init__(self, values: Sequence[Any]) -> None:
        found: dict[tuple[type, Any], int] = {}  # by type too: 1, 1.0 and True are different values
        self.categories: list[Any] = []
        codes = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            code = found.get((type(v), v))
            if code is None:
                code = found[(type(v), v)] = len(self.categories)
                self.categories.append(v)
            codes[i] = code
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.categories[c] for c in self.codes[index]]
        return self.categories[self.codes[index]]


def test_column(op: str, column: Sequence[Any] | NDArray[np.float64], value: Any, size: int) -> Mask:
    """One condition over a column: numpy for number columns (NaN is missing) and for numeric
    comparisons of mixed columns, a set for equality with texts, else `test_value` per value.
    Each fast path gives exactly what `test_value` gives (the tests hold them to it)."""
    if isinstance(column, Coded):
        tested: Mask = test_column(op, column.categories, value, len(column.categories))[column.codes]
        return tested
    if isinstance(column, np.ndarray):
        return _test_numbers(op, column, value)
    values = value if op in ("in", "not_in", "between") else (value,)
    if op not in ("exists", "contains") and all(is_number(v) for v in values):
        # A value that is not a number never equals or compares with one: as missing, it passes ne and not_in only.
        numbers = np.fromiter((v if type(v) is int or type(v) is float else np.nan for v in column), np.float64, size)
        return _test_numbers(op, numbers, value)
    if op in ("eq", "ne", "in", "not_in") and all(isinstance(v, str) for v in values):
        wanted = set(values)
        found = np.fromiter((type(v) is str and v in wanted for v in column), dtype=bool, count=size)
        return found if op in ("eq", "in") else ~found
    return np.fromiter((test_value(op, v, value) for v in column), dtype=bool, count=size)


def _test_numbers(op: str, column: NDArray[np.float64], value: Any) -> Mask:
    present = ~np.isnan(column)
    with np.errstate(invalid="ignore"):
        if op == "contains":  # a number contains nothing (parse() refuses it on number fields)
            return np.zeros(len(column), dtype=bool)
        if op == "exists":
            return present if value else ~present
        if op in ("ne", "not_in"):
            values = value if op == "not_in" else (value,)
            return ~present | ~np.isin(column, [v for v in values if is_number(v)])
        if op in ("eq", "in"):
            values = value if op == "in" else (value,)
            return np.isin(column, [v for v in values if is_number(v)])
        if op == "between":
            inside: Mask = (column >= value[0]) & (column <= value[1])
            return inside
        compare = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}[op]
        result: Mask = compare(column, value)
        return result


def test_value(op: str, actual: Any, value: Any) -> bool:
    """One condition on one value (JSON types; MISSING when absent)."""
    if op == "exists":
        return bool((actual is not MISSING and actual is not None) == value)
    if actual is MISSING or actual is None:
        return op in ("ne", "not_in")
    if op == "eq":
        return _equal(actual, value)
    if op == "ne":
        return not _equal(actual, value)
    if op == "in":
        return any(_equal(actual, v) for v in value)
    if op == "not_in":
        return not any(_equal(actual, v) for v in value)
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(value, str) and value.casefold() in actual.casefold()
        return isinstance(actual, list) and any(_equal(a, value) for a in actual)
    if op == "between":
        return _comparable(actual, value[0]) and value[0] <= actual <= value[1]
    if not _comparable(actual, value):
        return False
    return bool({"gt": actual > value, "gte": actual >= value, "lt": actual < value, "lte": actual <= value}[op])


def _equal(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _comparable(a: Any, b: Any) -> bool:
    return (is_number(a) and is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
