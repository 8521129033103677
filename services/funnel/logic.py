"""Funnels as pure functions (docs/api.md section 4): definitions, which stages an event matches, the
counted attempt of a customer, and the report over counted attempts. No I/O, no clock.

The counted attempt (PostHog's ordered funnel): events e1..ek matching stages 1..k, each a
different event, at times t1 <= ... <= tk, tk - t1 <= the window and each t(i) - t(i-1) <= that
stage's `max_days_from_previous`. The attempt reaching the furthest stage counts; among those,
the one with the earliest times compared stage by stage. It depends only on the set of matched
events, never on their arrival order, so late and repeated events change nothing but what they add.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from shared.keys import checked_key, checked_name
from shared.rules import PROPERTIES, Rule, RuleError, matches, parse, to_json

EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
MAX_STAGES = 20
MAX_DAYS = 36_500  # windows of up to a century: any longer and window ends leave the calendar
DAY = 86400.0


@dataclass(frozen=True)
class Match:
    """An event matches when its type and name are among these (None: any) and `where` holds over
    its properties (`traits.x` and `context.x` reach its traits and context)."""

    types: tuple[str, ...] | None
    events: tuple[str, ...] | None
    where: Rule | None

    def test(self, type_: str, name: str | None, document: dict[str, Any]) -> bool:
        if self.types is not None and type_ not in self.types:
            return False
        if self.events is not None and name not in self.events:
            return False
        return self.where is None or matches(self.where, document)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.types is not None:
            out["type"] = self.types[0] if len(self.types) == 1 else list(self.types)
        if self.events is not None:
            out["event"] = self.events[0] if len(self.events) == 1 else list(self.events)
        if self.where is not None:
            out["where"] = to_json(self.where)
        return out


@dataclass(frozen=True)
class Stage:
    key: str
    name: str
    match: tuple[Match, ...]  # any of them
    max_days_from_previous: float | None = None

    def test(self, type_: str, name: str | None, document: dict[str, Any]) -> bool:
        return any(m.test(type_, name, document) for m in self.match)


@dataclass(frozen=True)
class Funnel:
    key: str
    name: str
    stages: tuple[Stage, ...]
    conversion_window_days: float

    def stage_mask(self, type_: str, name: str | None, document: dict[str, Any]) -> int:
        """Bit i set when the event matches stage i."""
        return sum(1 << i for i, stage in enumerate(self.stages) if stage.test(type_, name, document))

    @cached_property
    def stage_windows(self) -> bool:
        """Whether a stage has a window of its own from the previous one (`max_days_from_previous`)."""
        return any(s.max_days_from_previous is not None for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "name": self.name, "conversion_window_days": self.conversion_window_days,
            "stages": [{"key": s.key, "name": s.name,
                        "match": s.match[0].to_json() if len(s.match) == 1 else [m.to_json() for m in s.match],
                        **({"max_days_from_previous": s.max_days_from_previous}
                           if s.max_days_from_previous is not None else {})} for s in self.stages],
        }


class StageMasks:
    """`Funnel.stage_mask` for many events at once: what an event's type and name decide is worked
    out once per (type, name), so only the `where` rules are tested per event (recording a batch
    tests every event against every stage of every funnel)."""

    def __init__(self, funnel: Funnel) -> None:
        self.funnel = funnel
        self._plans: dict[tuple[str, str | None], tuple[int, tuple[tuple[int, tuple[Rule, ...]], ...]]] = {}

    def __call__(self, type_: str, name: str | None, document: dict[str, Any]) -> int:
        return self.lazily(type_, name, lambda: document)

    def lazily(self, type_: str, name: str | None, document: Callable[[], dict[str, Any]]) -> int:
        """The mask, the document made (`document()`) only when a `where` rule is left to test."""
        plan = self._plans.get((type_, name))
        if plan is None:
            plan = self._plans[(type_, name)] = self._plan(type_, name)
        mask, conditional = plan
        if conditional:
            made = document()
            for bit, rules in conditional:
                if any(matches(rule, made) for rule in rules):
                    mask |= bit
        return mask

    def _plan(self, type_: str, name: str | None) -> tuple[int, tuple[tuple[int, tuple[Rule, ...]], ...]]:
        """The stages matched whatever the document holds (bits), and per other stage its `where`
        rules left to test."""
        fixed, conditional = 0, []
        for i, stage in enumerate(self.funnel.stages):
            fitting = [m for m in stage.match if (m.types is None or type_ in m.types)
                       and (m.events is None or name in m.events)]
            if any(m.where is None for m in fitting):
                fixed |= 1 << i
            elif fitting:
                conditional.append((1 << i, tuple(m.where for m in fitting if m.where is not None)))
        return fixed, tuple(conditional)


def event_document(properties: dict[str, Any], traits: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """What a stage's `where` reads: the properties, plus `traits.*` and `context.*`."""
    return {**properties, "properties": properties, "traits": traits, "context": context}


# --- definitions ---------------------------------------------------------------------------------

def parse_funnel(raw: Any, key: str | None = None) -> Funnel:
    """A funnel definition from JSON, or a RuleError naming the bad part (`stages[2].match.event`)."""
    if not isinstance(raw, dict):
        raise RuleError("body", "a funnel is a JSON object")
    key = checked_key(key if key is not None else raw.get("key"), "key")
    name = checked_name(raw.get("name", key), "name")
    window = raw.get("conversion_window_days")
    if not _days(window):
        raise RuleError("conversion_window_days", f"a number of days above 0 and at most {MAX_DAYS}")
    stages = raw.get("stages")
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        raise RuleError("stages", f"a list of 1-{MAX_STAGES} stages")
    parsed = tuple(_stage(s, f"stages[{i}]", first=i == 0) for i, s in enumerate(stages))
    keys = [s.key for s in parsed]
    if len(set(keys)) != len(keys):
        raise RuleError("stages", f"stage keys must differ: {keys}")
    return Funnel(key, name, parsed, window)  # numbers as written: 90 stays 90


def _stage(raw: Any, where: str, first: bool) -> Stage:
    if not isinstance(raw, dict):
        raise RuleError(where, "a stage is a JSON object {key, name, match, max_days_from_previous?}")
    if extra := sorted(set(raw) - {"key", "name", "match", "max_days_from_previous"}):
        raise RuleError(where, f"unexpected key(s) {', '.join(map(repr, extra))}")
    key = checked_key(raw.get("key"), f"{where}.key")
    name = checked_name(raw.get("name", key), f"{where}.name")
    sla = raw.get("max_days_from_previous")
    if sla is not None and (first or not _days(sla)):
        raise RuleError(f"{where}.max_days_from_previous",
                        "the first stage has no previous one" if first else f"a number of days above 0 and at most {MAX_DAYS}")
    match = raw.get("match")
    if isinstance(match, list) and match:
        matches_ = tuple(_match(m, f"{where}.match[{i}]") for i, m in enumerate(match))
    else:
        matches_ = (_match(match, f"{where}.match"),)
    return Stage(key, name, matches_, sla)


def _match(raw: Any, where: str) -> Match:
    if not isinstance(raw, dict):
        raise RuleError(where, 'a match is an object {"type": ..., "event": ...?, "where": ...?} or a non-empty list of them')
    if extra := sorted(set(raw) - {"type", "event", "where"}):
        raise RuleError(where, f"unexpected key(s) {', '.join(map(repr, extra))}; allowed: type, event, where")
    types = _names(raw.get("type"), f"{where}.type")
    if types is not None and (bad := [t for t in types if t not in EVENT_TYPES]):
        raise RuleError(f"{where}.type", f"{bad[0]!r} is not a message type; one of {', '.join(EVENT_TYPES)}")
    events = _names(raw.get("event"), f"{where}.event")
    rule = parse(raw["where"], PROPERTIES, where=f"{where}.where") if raw.get("where") is not None else None
    if types is None and events is None and rule is None:
        raise RuleError(where, "say what matches: a type, an event name or a where")
    return Match(types, events, rule)


def _names(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise RuleError(where, "a name or a non-empty list of names")
    return tuple(values)


def _days(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_DAYS


LIFECYCLE = parse_funnel({
    "key": "lifecycle", "name": "Customer lifecycle", "conversion_window_days": 90,
    "stages": [
        {"key": "awareness", "name": "Awareness", "match": {"type": ["page", "track"]}},
        {"key": "interest", "name": "Interest", "match": [
            {"type": "track", "event": "Signed Up"},
            {"type": "identify", "where": {"field": "traits.email", "op": "exists", "value": True}}]},
        {"key": "consideration", "name": "Consideration", "match": {"type": "track", "event": [
            "Product Viewed", "Product Added", "Lead Created", "Checkout Started"]}},
        {"key": "purchase", "name": "Purchase", "match": {"type": "track", "event": "Order Completed"}},
        {"key": "loyalty", "name": "Loyalty (a second order)", "match": {"type": "track", "event": "Order Completed"}},
    ],
})

SALES = parse_funnel({
    "key": "sales", "name": "Sales process", "conversion_window_days": 180,
    "stages": [
        {"key": "lead", "name": "Lead", "match": [
            {"type": "track", "event": "Lead Created"},
            {"type": "identify", "where": {"field": "traits.email", "op": "exists", "value": True}}]},
        {"key": "screening", "name": "Screening", "match": {"type": "track", "event": "Lead Qualified"}},
        {"key": "development", "name": "Development", "match": {"type": "track", "event": [
            "Meeting Booked", "Demo Completed", "Quote Sent"]}},
        {"key": "conversion", "name": "Conversion", "match": {"type": "track", "event": "Order Completed"}},
        {"key": "maintenance", "name": "Maintenance (a later order or a renewal)", "match": {"type": "track", "event": [
            "Order Completed", "Subscription Renewed"]}},
    ],
})

# The built-in funnels (docs/api.md section 4): always present, editable, not deletable; listed first.
BUILT_INS = (LIFECYCLE, SALES)
BUILT_IN_KEYS = tuple(f.key for f in BUILT_INS)


# --- the counted attempt -------------------------------------------------------------------------

class Matched(NamedTuple):
    """One matched event: when (epoch seconds), its id, and the stages it matches (bits). A named
    tuple: a batch makes one per match, and a frozen dataclass costs four times as much to make."""

    at: float
    event_id: str
    stages: int


@dataclass(frozen=True)
class Attempt:
    events: tuple[Matched, ...]  # one per stage reached, in stage order

    @property
    def depth(self) -> int:
        return len(self.events)

    @cached_property
    def times(self) -> tuple[float, ...]:
        return tuple(e.at for e in self.events)


NO_ATTEMPT = Attempt(())


def counted_attempt(funnel: Funnel, matched: Sequence[Matched]) -> Attempt:
    """The attempt that reaches the furthest stage; among those, the earliest times stage by stage.

    A depth-first search over candidate events in time order, memoised per (start, stage, event).
    For a fixed start, taking the earliest event that fits a stage never reaches less far (any
    later one can be swapped for it), so later ones are tried only when the next stage has its own
    window from this one (`max_days_from_previous`) or when the earliest are already used (events
    at equal times). Later starts are always tried: their window ends later.

    Without per-stage windows and with no two events at one time (the usual customer), that
    comes down to `_earliest_attempt`."""
    events = sorted(matched, key=_time_and_id)
    if not funnel.stage_windows and len({e.at for e in events}) == len(events):  # sorted: no two at one time
        return _earliest_attempt(funnel, events)
    return _searched_attempt(funnel, events)


_time_and_id = itemgetter(0, 1)  # a Matched's (at, event_id)


def _earliest_attempt(funnel: Funnel, events: list[Matched]) -> Attempt:
    """`counted_attempt` for a funnel without per-stage windows, over events in time order at
    different times. From a start, taking the earliest later event of each next stage gives the
    earliest times and reaches furthest (any later one can be swapped for it); a later start gives
    later times, so the first start reaching furthest counts. And where a start's path ends for
    want of any later event of the next stage (not at its window's end), every later start's path
    is, stage by stage, at or after this one's, so it ends there too: no later start is tried."""
    k = len(funnel.stages)
    window = funnel.conversion_window_days * DAY
    positions = [[i for i, e in enumerate(events) if e.stages >> stage & 1] for stage in range(k)]
    best: tuple[Matched, ...] = ()
    for start in positions[0]:
        end = events[start].at + window
        path, last = [events[start]], start
        exhausted = False
        for stage in range(1, k):
            found = positions[stage]
            j = bisect_right(found, last)
            if j == len(found):
                exhausted = True
                break
            if events[found[j]].at > end:
                break
            last = found[j]
            path.append(events[last])
        if len(path) > len(best):
            best = tuple(path)
        if exhausted or len(best) == k:
            break
    return Attempt(best)


def _searched_attempt(funnel: Funnel, events: list[Matched]) -> Attempt:
    """`counted_attempt` in general: the search, over events in (time, id) order."""
    k = len(funnel.stages)
    by_stage = [[e for e in events if e.stages >> i & 1] for i in range(k)]
    times = [[e.at for e in stage] for stage in by_stage]
    window = funnel.conversion_window_days * DAY
    slas = [s.max_days_from_previous * DAY if s.max_days_from_previous is not None else math.inf for s in funnel.stages]
    memo: dict[tuple[str, int, str, frozenset[str]], tuple[Matched, ...]] = {}

    def search(stage: int, candidates: list[Matched], last_at: float | None, tied: frozenset[str],
               start: Matched | None) -> tuple[Matched, ...]:
        only_earliest = stage > 0 and (stage + 1 == k or math.isinf(slas[stage + 1]))
        found: tuple[Matched, ...] = ()
        for candidate in candidates:
            if found and candidate.at > found[0].at and (only_earliest or len(found) == k - stage):
                break  # past the earliest time that works: later candidates only tie or lose
            if candidate.event_id in tied:
                continue
            now_tied = tied | {candidate.event_id} if candidate.at == last_at else frozenset({candidate.event_id})
            path = (candidate, *continuation(stage, candidate, now_tied, start or candidate))
            if len(path) > len(found) or (len(path) == len(found) and _times(path) < _times(found)):
                found = path
        return found

    def continuation(i: int, last: Matched, tied: frozenset[str], start: Matched) -> tuple[Matched, ...]:
        if i + 1 == k:
            return ()
        key = (start.event_id, i, last.event_id, tied)
        if key not in memo:
            latest = min(start.at + window, last.at + slas[i + 1])
            lo, hi = bisect_left(times[i + 1], last.at), bisect_right(times[i + 1], latest)
            memo[key] = search(i + 1, by_stage[i + 1][lo:hi], last.at, tied, start)
        return memo[key]

    return Attempt(search(0, by_stage[0], None, frozenset(), None))


def _times(path: tuple[Matched, ...]) -> tuple[float, ...]:
    return tuple(e.at for e in path)


# --- reports -------------------------------------------------------------------------------------

def report(funnel: Funnel, depth: NDArray[np.int64], first_at: NDArray[np.float64], last_at: NDArray[np.float64],
           gaps: NDArray[np.float64], now: float) -> dict[str, Any]:
    """Per stage: entered, conversion from the previous stage, drop-off, in progress, median
    seconds from the previous stage; and the overall conversion. One row per customer of the
    cohort: the stages reached (`depth`), t1, the time of the last stage reached, and the seconds
    between consecutive stages (`gaps[:, i]` = t(i) - t(i-1), NaN beyond the depth)."""
    k = len(funnel.stages)
    entered = [int(np.count_nonzero(depth > i)) for i in range(k)]
    window_open = now <= first_at + funnel.conversion_window_days * DAY
    stages = []
    for i, stage in enumerate(funnel.stages):
        previous = entered[i - 1] if i else None
        in_progress = 0
        if i:
            # Stopped at the previous stage, and both the funnel's and this stage's windows still open.
            waiting = (depth == i) & window_open
            if stage.max_days_from_previous is not None:
                waiting &= now <= last_at + stage.max_days_from_previous * DAY
            in_progress = int(np.count_nonzero(waiting))
        stages.append({
            "stage": stage.key,
            "entered": entered[i],
            "converted_from_previous_rate": entered[i] / previous if previous else None,
            "drop_off": previous - entered[i] - in_progress if previous is not None else 0,
            "in_progress": in_progress,
            "median_seconds_from_previous": median(gaps[depth > i, i]) if i else None,
        })
    return {"stages": stages, "overall_conversion_rate": entered[-1] / entered[0] if entered[0] else None}


def median(values: NDArray[np.float64]) -> float | None:
    """The middle value; the mean of the two middle ones for an even count; None for none."""
    return float(np.median(values)) if len(values) else None


# --- journey analytics (docs/api.md section 9) -----------------------------------------------------

JOURNEY_TYPES = ("page", "track", "identify")  # the events a journey keeps: touchpoints and what paths name


def step_name(type_: str, name: str | None) -> str:
    """How touchpoints and paths name an event: a track's name, `page:<name>` (`page` without a
    name), `identify`."""
    if type_ == "page":
        return f"page:{name}" if name else "page"
    return name or type_ if type_ == "track" else type_


INTERVALS = ("day", "week", "month")
MAX_PERIODS = 1000  # 2.7 years by day, 19 by week, 83 by month: a longer range is a 422, not a minute of work
MONDAY = 4 * DAY  # 1970-01-05, the first Monday after the epoch


def period_floor(at: float, interval: str) -> float:
    """The UTC start of the period holding `at` (weeks start on Monday)."""
    if interval == "day":
        return math.floor(at / DAY) * DAY
    if interval == "week":
        return math.floor((at - MONDAY) / (7 * DAY)) * 7 * DAY + MONDAY
    moment = datetime.fromtimestamp(at, UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()


def period_after(start: float, interval: str) -> float:
    if interval == "day":
        return start + DAY
    if interval == "week":
        return start + 7 * DAY
    moment = datetime.fromtimestamp(start, UTC)
    return datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC).timestamp()


def period_starts(start: float, end: float, interval: str) -> list[float] | None:
    """The starts of the periods meeting [start, end), the first one at or before `start`; None
    when there are more than MAX_PERIODS."""
    starts = [period_floor(start, interval)]
    while (following := period_after(starts[-1], interval)) < end:
        if len(starts) == MAX_PERIODS:
            return None
        starts.append(following)
    return starts


def trends(funnel: Funnel, depth: NDArray[np.int64], first_at: NDArray[np.float64], starts: list[float]) -> list[dict[str, Any]]:
    """Per period (by t1, one row per customer of the cohort): entered per stage and the overall
    conversion (null over no customer)."""
    period = np.searchsorted(np.array(starts), first_at, side="right") - 1
    entered = np.stack([np.bincount(period[depth > i], minlength=len(starts)) for i in range(len(funnel.stages))]) \
        if len(starts) else np.zeros((len(funnel.stages), 0), dtype=np.int64)
    out = []
    for p, start in enumerate(starts):
        counts = [int(n) for n in entered[:, p]]
        out.append({"start": datetime.fromtimestamp(start, UTC), "stages": [{"stage": s.key, "entered": n} for s, n in
                                                                          zip(funnel.stages, counts, strict=True)],
                    "overall_conversion_rate": counts[-1] / counts[0] if counts[0] else None})
    return out


MODELS = ("first_touch", "last_touch", "linear", "position_based")


def touch_weights(model: str, place: NDArray[np.int64], count: NDArray[np.int64]) -> NDArray[np.float64]:
    """The credit of one conversion each touchpoint gets: `place` in its conversion's `count`
    touchpoints (in time order)."""
    if model == "first_touch":
        return (place == 0).astype(np.float64)
    if model == "last_touch":
        return (place == count - 1).astype(np.float64)
    if model == "linear":
        return 1.0 / count
    middle = 0.2 / np.maximum(count - 2, 1)
    ends = (place == 0) | (place == count - 1)
    weights: NDArray[np.float64] = np.where(count == 1, 1.0, np.where(count == 2, 0.5, np.where(ends, 0.4, middle)))
    return weights


def attribution(model: str, row: NDArray[np.int64], place: NDArray[np.int64], channel: NDArray[np.int64],
                channels: Sequence[str | None], revenue: NDArray[np.float64]) -> dict[str, Any]:
    """Credit 1 per conversion over its touchpoints' channels, and its stage event's revenue (NaN:
    none) by the same weights. Touchpoints as columns in conversion order, then time order: each
    one's conversion (`row`), `place` among the conversion's touchpoints and `channel` code (a name
    of `channels`). A conversion without a touchpoint credits channel null. Channels by credit
    descending, equal credits by channel (null last)."""
    conversions = len(revenue)
    count = np.bincount(row, minlength=conversions)
    weights = touch_weights(model, place, count[row])
    value = np.nan_to_num(revenue)  # summed in the order of the touchpoints, per channel, as by hand
    summed = np.bincount(channel, weights=weights, minlength=len(channels)).tolist()
    earned = np.bincount(channel, weights=weights * value[row], minlength=len(channels)).tolist()
    credit: dict[str | None, float] = defaultdict(float)
    income: dict[str | None, float] = defaultdict(float)
    for code, name in enumerate(channels):
        credit[name] += summed[code]
        income[name] += earned[code]
    untouched = (count == 0).nonzero()[0]
    if len(untouched):
        credit[None] += float(len(untouched))
        income[None] += sum(value[untouched].tolist())
    with_revenue = bool((~np.isnan(revenue)).any())
    order = sorted(credit, key=lambda c: (-credit[c], c is None, c or ""))
    rows = [{"channel": c, "credit": credit[c], "share": credit[c] / conversions,
             **({"revenue": income[c]} if with_revenue else {})} for c in order if credit[c] > 0]
    return {"model": model, "conversions": conversions, "channels": rows}


TOP = 20  # touchpoints and paths list this many
MIN_CUSTOMERS = 5  # a touchpoint seen by fewer customers is not listed


PRESENCE_CELLS = 1 << 25  # customers x names up to this: a grid of booleans, beyond it a sort


def names_seen(row: NDArray[np.int64], name: NDArray[np.int64], moved: NDArray[np.bool_],
               kinds: int, cells: int = PRESENCE_CELLS) -> tuple[list[int], list[int]]:
    """Per name code (of `kinds`): how many customers saw it and how many of them moved on, from
    (customer position, name code) pairs with repeats; `moved` per customer position."""
    if len(moved) * kinds <= cells:
        grid = np.zeros((len(moved), kinds), dtype=np.bool_)
        grid[row, name] = True
        return grid.sum(axis=0).tolist(), grid[moved].sum(axis=0).tolist()
    pairs = np.sort(row * kinds + name)
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if len(pairs) else pairs
    having = np.bincount(pairs % kinds, minlength=kinds)
    moving = np.bincount(pairs[moved[pairs // kinds]] % kinds, minlength=kinds)
    return having.tolist(), moving.tolist()


def touchpoints(total: int, moved_total: int, having: dict[str, int], moving: dict[str, int]) -> list[dict[str, Any]]:
    """PostHog's correlation over a population of `total` customers of whom `moved_total` moved on:
    per name, the customers who saw it (`having`) and how many of them moved on (`moving`), the rate
    with and without it and the odds ratio (a/b)/(c/d) (with/without, moved on/not), 0.5 added to
    each cell when one is zero; the TOP names of at least MIN_CUSTOMERS customers by |log odds
    ratio|, equal ones by name."""
    rows = []
    for name, customers in having.items():
        if customers < MIN_CUSTOMERS:
            continue
        a, b = moving[name], customers - moving[name]
        c, d = moved_total - a, (total - customers) - (moved_total - a)
        if 0 in (a, b, c, d):
            a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
        odds = (a / b) / (c / d)
        rows.append({"name": name, "customers": customers, "converted": moving[name], "rate": moving[name] / customers,
                     "rate_without": (moved_total - moving[name]) / (total - customers) if total > customers else None,
                     "odds_ratio": odds})
    rows.sort(key=lambda r: (-abs(math.log(r["odds_ratio"])), r["name"]))
    return rows[:TOP]


MAX_PATH_STEPS = 10


def paths(counts: dict[tuple[str, ...], int]) -> list[dict[str, Any]]:
    """The TOP most common sequences (customers per sequence; shorter ones when fewer events
    followed, empty when none did), most customers first, equal counts by the sequence itself."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"steps": list(steps), "customers": n} for steps, n in ordered[:TOP]]
