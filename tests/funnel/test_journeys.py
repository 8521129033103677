"""Journey analytics (docs/api.md section 9) of random customers end to end: random steps, times
with ties, channels per event, anonymous visits merged into their user, duplicates and arrival
order sent through the gateway; every answer held to a brute-force reference computed here from
the raw messages (the stages each kind of message fills written down apart from logic.py).
SQLite and PostgreSQL."""
from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.funnel.logic import LIFECYCLE, Funnel, Matched, parse_funnel
from tests.funnel.support import EMAIL_VISIT, SEARCH_VISIT, T0, Funnels, at, iso
from tests.funnel.test_random import KINDS, arrive, message
from tests.funnel.test_semantics import reference_attempt

CHANNELS = {"email": EMAIL_VISIT, "search": SEARCH_VISIT, "direct": None}
STAGES = [s.key for s in LIFECYCLE.stages]
NAMES = {"page": "page:Home", "click": "Button Clicked", "signup": "Signed Up", "view": "Product Viewed",
         "added": "Product Added", "order": "Order Completed", "email": "identify", "plain": "identify"}


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


@dataclass(frozen=True)
class Sent:
    """One message as the reference sees it: when (epoch seconds), its id, kind and channel."""

    at: float
    mid: str
    kind: str
    channel: str

    @property
    def type(self) -> str:
        return {"page": "page", "email": "identify", "plain": "identify"}.get(self.kind, "track")


def population(rng: random.Random, size: int) -> tuple[list[dict[str, Any]], dict[str, list[Sent]]]:
    """Messages and each customer's messages. Steps land on whole quarter days (many ties); every
    page and track comes from a random channel; one customer in four starts anonymous and is
    merged into their user by a later identify carrying both ids."""
    messages: list[dict[str, Any]] = []
    sent: dict[str, list[Sent]] = {}
    for n in range(size):
        user = f"c{n:02d}"
        anon = f"anon-{user}" if rng.random() < 0.25 else None
        sent[user] = []
        day = float(rng.randint(-120, -10))
        kinds = [rng.choice(["page", "click", "view"]), rng.choice(["signup", "email"]), rng.choice(["view", "added"]),
                 "order", "order"][:rng.randint(1, 5)]
        steps = []
        for kind in kinds:
            day += rng.choice([0, 0, 0.25, 1, 3, 40])
            steps.append((kind, day))
        first = steps[0][1]  # other events along the way: what touchpoints and paths are about
        steps += [(rng.choice(["page", "click", "plain", "click"]), first + rng.choice([0, 0.5, 1.5, 2.5, 5, 30]))
                  for _ in range(rng.randint(0, 3))]
        steps += [(rng.choice(["page", "click", "view", "plain"]), day + rng.choice([-1, 0, 0.5, 2])) for _ in range(rng.randint(0, 2))]
        for i, (kind, d) in enumerate(steps):
            channel = rng.choice(list(CHANNELS))
            mid = f"{user}-{i}"
            anonymous = anon is not None and i < 2
            msg = message(kind, mid, None if anonymous else user, min(d, 0), CHANNELS[channel])
            if anonymous:
                msg["anonymousId"] = anon
            messages.append(msg)
            sent[user].append(Sent((T0 + timedelta(days=min(d, 0))).timestamp(), mid, kind, channel))
        if anon is not None:  # the link: an identify with both ids, filling no lifecycle stage
            msg = message("plain", f"{user}-link", user, 0, None)
            messages.append({**msg, "anonymousId": anon})
            sent[user].append(Sent(T0.timestamp(), f"{user}-link", "plain", "direct"))
    return messages, sent


def attempts_of(sent: dict[str, list[Sent]], funnel: Funnel = LIFECYCLE) -> dict[str, tuple[float, ...]]:
    return {c: reference_attempt(funnel, [Matched(s.at, s.mid, KINDS[s.kind]) for s in events if KINDS[s.kind]])
            for c, events in sent.items()}


def day_at(days: float) -> float:
    return (T0 + timedelta(days=days)).timestamp()


# --- trends ----------------------------------------------------------------------------------------

def period_of(moment: datetime, interval: str) -> date:
    d = moment.astimezone(UTC).date()
    return {"day": d, "week": d - timedelta(days=d.weekday()), "month": d.replace(day=1)}[interval]


def next_period(d: date, interval: str) -> date:
    if interval == "month":
        return date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return d + timedelta(days=1 if interval == "day" else 7)


def expected_trends(attempts: dict[str, tuple[float, ...]], start: float, end: float, interval: str) -> dict[str, Any]:
    lo, hi = T0 + timedelta(days=start), T0 + timedelta(days=end)
    periods: list[date] = [period_of(lo, interval)]
    while datetime.combine(next_period(periods[-1], interval), datetime.min.time(), UTC) < hi:
        periods.append(next_period(periods[-1], interval))
    entered = {p: [0] * len(STAGES) for p in periods}
    for times in attempts.values():
        if times and lo.timestamp() <= times[0] < hi.timestamp():
            p = period_of(datetime.fromtimestamp(times[0], UTC), interval)
            for i in range(len(times)):
                entered[p][i] += 1
    return {"funnel": "lifecycle", "from": at(start), "to": at(end), "interval": interval, "periods": [
        {"start": iso(datetime.combine(p, datetime.min.time(), UTC)),
         "stages": [{"stage": s, "entered": n} for s, n in zip(STAGES, entered[p], strict=True)],
         "overall_conversion_rate": entered[p][-1] / entered[p][0] if entered[p][0] else None} for p in periods]}


async def assert_trends(funnels: Funnels, attempts: dict[str, tuple[float, ...]]) -> None:
    for start, end, interval in [(-130, 1, "week"), (-130, 1, "month"), (-45.5, -20.25, "day"), (-400, -300, "week")]:
        got = await funnels.get("/api/funnels/lifecycle/trends", **{"from": at(start), "to": at(end), "interval": interval})
        assert got == expected_trends(attempts, start, end, interval), (start, end, interval)


# --- attribution -------------------------------------------------------------------------------------

def weights(model: str, n: int) -> list[float]:
    """docs/api.md section 9, written out per case."""
    if n == 1:
        return [1.0]
    if model == "first_touch":
        return [1.0] + [0.0] * (n - 1)
    if model == "last_touch":
        return [0.0] * (n - 1) + [1.0]
    if model == "linear":
        return [1 / n] * n
    if n == 2:
        return [0.5, 0.5]
    return [0.4, *[0.2 / (n - 2)] * (n - 2), 0.4]


def expected_attribution(sent: dict[str, list[Sent]], attempts: dict[str, tuple[float, ...]], stage: int, model: str,
                         start: float, end: float) -> dict[str, Any]:
    credit: dict[str, float] = defaultdict(float)
    conversions = 0
    for customer, times in attempts.items():
        if len(times) <= stage or not day_at(start) <= times[stage] < day_at(end):
            continue
        conversions += 1
        touches = sorted((s for s in sent[customer] if s.type in ("page", "track") and times[0] <= s.at <= times[stage]),
                         key=lambda s: (s.at, s.mid))
        for touch, weight in zip(touches, weights(model, len(touches)), strict=True):
            credit[touch.channel] += weight
    channels = sorted((c for c in credit if credit[c] > 0), key=lambda c: (-round(credit[c], 9), c))
    return {"funnel": "lifecycle", "stage": STAGES[stage], "from": at(start), "to": at(end), "model": model,
            "conversions": conversions,
            "channels": [{"channel": c, "credit": pytest.approx(credit[c]), "share": pytest.approx(credit[c] / conversions)}
                         for c in channels]}


async def assert_attribution(funnels: Funnels, sent: dict[str, list[Sent]], attempts: dict[str, tuple[float, ...]]) -> None:
    for stage, (start, end) in [(3, (-130, 1)), (1, (-130, 1)), (3, (-60, -10)), (0, (-400, -300))]:
        for model in ("first_touch", "last_touch", "linear", "position_based"):
            got = await funnels.get("/api/funnels/lifecycle/attribution",
                                    **{"stage": STAGES[stage], "model": model, "from": at(start), "to": at(end)})
            revenue = [c.pop("revenue", None) for c in got["channels"]]
            want = expected_attribution(sent, attempts, stage, model, start, end)
            # equal credits may come in either order here: the service breaks ties by channel name
            assert {**got, "channels": sorted(got["channels"], key=lambda c: c["channel"])} == {
                **want, "channels": sorted(want["channels"], key=lambda c: c["channel"])}, (stage, model)
            assert [c["credit"] for c in got["channels"]] == sorted((c["credit"] for c in got["channels"]), reverse=True)
            assert sum(c["credit"] for c in got["channels"]) == pytest.approx(want["conversions"])
            if stage == 3:  # every order carries revenue 1: each channel's revenue is its credit
                assert revenue == [pytest.approx(c["credit"]) for c in got["channels"]]


# --- touchpoints --------------------------------------------------------------------------------------

def expected_touchpoints(sent: dict[str, list[Sent]], attempts: dict[str, tuple[float, ...]], funnel: Funnel, stage: int,
                         start: float, end: float) -> dict[str, Any]:
    population: list[tuple[set[str], bool]] = []
    for customer, times in attempts.items():
        if len(times) < stage or not day_at(start) <= times[0] < day_at(end):
            continue
        moved = len(times) > stage
        after, until = times[stage - 1], times[stage] if moved else times[0] + funnel.conversion_window_days * 86400
        names = {NAMES[m.kind] for m in sent[customer] if after < m.at < until or (not moved and m.at == until)}
        population.append((names, moved))
    rows = []
    for name in sorted({n for names, _ in population for n in names}):
        a = sum(1 for names, moved in population if name in names and moved)
        b = sum(1 for names, moved in population if name in names and not moved)
        c = sum(1 for names, moved in population if name not in names and moved)
        d = sum(1 for names, moved in population if name not in names and not moved)
        if a + b < 5:
            continue
        cells = [x + 0.5 for x in (a, b, c, d)] if 0 in (a, b, c, d) else [float(x) for x in (a, b, c, d)]
        rows.append({"name": name, "customers": a + b, "converted": a, "rate": a / (a + b),
                     "rate_without": c / (c + d) if c + d else None,
                     "odds_ratio": pytest.approx(cells[0] * cells[3] / (cells[1] * cells[2]))})
    return {"funnel": funnel.key, "stage": funnel.stages[stage].key, "from": at(start), "to": at(end),
            "customers": len(population), "converted": sum(1 for _, moved in population if moved), "touchpoints": rows}


async def assert_touchpoints(funnels: Funnels, sent: dict[str, list[Sent]], attempts: dict[str, tuple[float, ...]],
                             funnel: Funnel = LIFECYCLE) -> None:
    for stage, (start, end) in [(1, (-130, 1)), (3, (-130, 1)), (2, (-60, -10))]:
        got = await funnels.get("/api/funnels/lifecycle/touchpoints", stage=STAGES[stage], **{"from": at(start), "to": at(end)})
        want = expected_touchpoints(sent, attempts, funnel, stage, start, end)
        logs = [abs(math.log(t["odds_ratio"])) for t in got["touchpoints"]]
        assert all(x >= y - 1e-9 for x, y in itertools.pairwise(logs)), logs  # largest |log odds ratio| first
        assert len(want["touchpoints"]) <= 20  # so no tie is cut at the 20th
        assert {**got, "touchpoints": sorted(got["touchpoints"], key=lambda t: t["name"])} == want, stage


# --- paths -------------------------------------------------------------------------------------------

def expected_paths(sent: dict[str, list[Sent]], attempts: dict[str, tuple[float, ...]], funnel: Funnel, stage: int,
                   start: float, end: float, steps: int, now: float) -> dict[str, Any]:
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    window = funnel.conversion_window_days * 86400
    for customer, times in attempts.items():
        if len(times) != stage or not day_at(start) <= times[0] < day_at(end) or not times[0] + window < now:
            continue
        later = sorted((m for m in sent[customer] if times[-1] < m.at <= times[0] + window), key=lambda m: (m.at, m.mid))
        counts[tuple(NAMES[m.kind] for m in later[:steps])] += 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:20]
    return {"funnel": funnel.key, "stage": funnel.stages[stage].key, "from": at(start), "to": at(end), "steps": steps,
            "total": sum(counts.values()), "paths": [{"steps": list(p), "customers": n} for p, n in ordered]}


async def assert_paths(funnels: Funnels, sent: dict[str, list[Sent]], attempts: dict[str, tuple[float, ...]],
                       funnel: Funnel = LIFECYCLE) -> None:
    for stage, steps, (start, end) in [(1, 3, (-130, 1)), (3, 2, (-130, 1)), (2, 1, (-130, -30))]:
        got = await funnels.get("/api/funnels/lifecycle/paths", stage=STAGES[stage], steps=steps,
                                **{"from": at(start), "to": at(end)})
        want = expected_paths(sent, attempts, funnel, stage, start, end, steps, funnels.clock.now().timestamp())
        assert got == want, (stage, steps)


# --- the test ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [3])
async def test_journey_answers_of_random_customers_match_the_reference(funnels: Funnels, seed: int) -> None:
    rng = random.Random(seed)
    messages, sent = population(rng, 40)
    await arrive(funnels, rng, messages)
    attempts = attempts_of(sent)
    assert sum(1 for t in attempts.values() if len(t) >= 4) >= 5  # enough buyers to attribute
    await assert_trends(funnels, attempts)
    await assert_attribution(funnels, sent, attempts)
    await assert_touchpoints(funnels, sent, attempts)
    await assert_paths(funnels, sent, attempts)
    # erased buyers leave every answer
    buyers = sorted(c for c, t in attempts.items() if len(t) >= 4)
    for customer in buyers[:2]:
        await funnels.erase(customer)
        del sent[customer]
    attempts = attempts_of(sent)
    await assert_attribution(funnels, sent, attempts)
    # an edit rebuilds them: a 2-day window
    edited = parse_funnel({**LIFECYCLE.to_json(), "conversion_window_days": 2})
    await funnels.update("lifecycle", edited.to_json())
    attempts = attempts_of(sent, edited)
    await assert_trends(funnels, attempts)
    await assert_attribution(funnels, sent, attempts)
    await assert_touchpoints(funnels, sent, attempts, edited)
    await assert_paths(funnels, sent, attempts, edited)
