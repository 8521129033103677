"""Random customers end to end: random steps, times, channels, duplicates and arrival order sent
through the gateway; every number of the lifecycle report (and each customer's attempt) held to
the brute-force reference of test_semantics computed from the raw events. SQLite and PostgreSQL."""
from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from services.funnel.logic import LIFECYCLE, Matched
from tests.funnel.support import EMAIL_VISIT, SEARCH_VISIT, T0, Funnels, at, identify, page, track
from tests.funnel.test_semantics import reference_attempt, reference_report

# The contract's lifecycle matches, written down apart from logic.py: the stages (bits) each kind
# of message fills: awareness 1, interest 2, consideration 4, purchase 8, loyalty 16.
KINDS: dict[str, int] = {"page": 0b00001, "click": 0b00001, "signup": 0b00011, "email": 0b00010, "plain": 0b00000,
                         "view": 0b00101, "added": 0b00101, "order": 0b11001}
CHANNELS = {"email": EMAIL_VISIT, "search": SEARCH_VISIT, "direct": None}


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


def message(kind: str, mid: str, user: str, day: float, context: dict[str, Any] | None) -> dict[str, Any]:
    events = {"click": "Button Clicked", "signup": "Signed Up", "view": "Product Viewed", "added": "Product Added",
              "order": "Order Completed"}
    if kind == "page":
        return page(mid, user, day, context=context)
    if kind == "email":
        return identify(mid, user, day, email=f"{user}@example.com")
    if kind == "plain":
        return identify(mid, user, day, plan="pro")
    return track(mid, user, events[kind], day, context=context, revenue=1)


def population(rng: random.Random, size: int) -> tuple[list[dict[str, Any]], dict[str, list[Matched]], dict[str, str]]:
    """Messages, each customer's matched events (epoch seconds), and each customer's channel (every
    page and track of a customer comes from one source, so the first step's channel is known)."""
    messages: list[dict[str, Any]] = []
    matched: dict[str, list[Matched]] = {}
    channels: dict[str, str] = {}
    for n in range(size):
        user, channel = f"c{n:02d}", rng.choice(list(CHANNELS))
        channels[user], matched[user] = channel, []
        for i, (kind, day) in enumerate(_path(rng) + _noise(rng)):
            messages.append(message(kind, f"{user}-{i}", user, min(day, 0), CHANNELS[channel]))
            if KINDS[kind]:
                matched[user].append(Matched((T0 + timedelta(days=min(day, 0))).timestamp(), f"{user}-{i}", KINDS[kind]))
    return messages, matched, channels


def _path(rng: random.Random) -> list[tuple[str, float]]:
    """A walk towards a random stage: gaps from none (equal times) to past the window, some steps
    before the one they follow."""
    kinds = [rng.choice(["page", "click", "view"]), rng.choice(["signup", "email"]), rng.choice(["view", "added"]),
             "order", "order"][:rng.randint(1, 5)]
    day, steps = float(rng.randint(-150, -5)), []
    for kind in kinds:
        day += rng.choice([0, 0.25, 1, 3, 20, 95]) * (-0.25 if rng.random() < 0.15 else 1)
        steps.append((kind, day))
    return steps


def _noise(rng: random.Random) -> list[tuple[str, float]]:
    return [(rng.choice(list(KINDS)), rng.randint(-600, 0) / 4) for _ in range(rng.randint(0, 3))]


def expected(matched: dict[str, list[Matched]], channels: dict[str, str], start: float, end: float, now: float,
             breakdown: bool = False) -> dict[str, Any]:
    """The report for customers whose counted t1 is in [start, end) days after T0."""
    lo, hi = ((T0 + timedelta(days=d)).timestamp() for d in (start, end))
    attempts = {c: reference_attempt(LIFECYCLE, events) for c, events in matched.items()}
    cohort = {c: t for c, t in attempts.items() if t and lo <= t[0] < hi}
    now_s = (T0 + timedelta(days=now)).timestamp()
    body = {"funnel": "lifecycle", "from": at(start), "to": at(end), "customers": len(cohort),
            **reference_report(LIFECYCLE, list(cohort.values()), now_s)}
    if breakdown:
        groups: dict[str, list[tuple[float, ...]]] = {}
        for customer, times in cohort.items():
            groups.setdefault(channels[customer], []).append(times)
        body["breakdown_by"] = "channel"
        body["breakdown"] = sorted(({"value": v, "customers": len(ts), **reference_report(LIFECYCLE, ts, now_s)}
                                    for v, ts in groups.items()), key=lambda g: (-g["customers"], g["value"]))
    return body


async def arrive(funnels: Funnels, rng: random.Random, messages: list[dict[str, Any]]) -> None:
    """Shuffled, in batches of random size, some messages sent again (an SDK's retries)."""
    shuffled = rng.sample(messages, len(messages))
    sent: list[dict[str, Any]] = []
    while shuffled:
        size = rng.randint(5, 40)
        batch, shuffled = shuffled[:size], shuffled[size:]
        await funnels.send(*batch, *rng.sample(sent, min(len(sent), 3)))
        sent += batch


@pytest.mark.parametrize("seed", [1, 2])
async def test_reports_of_random_customers_match_the_reference(funnels: Funnels, seed: int) -> None:
    rng = random.Random(seed)
    messages, matched, channels = population(rng, 30)
    await arrive(funnels, rng, messages)
    await assert_attempts_are_the_reference(funnels, matched)
    for start, end in [(-200, 1), (-60, -20), (-20, 0)]:
        got = await funnels.report("lifecycle", **{"from": at(start), "to": at(end)})
        assert got == expected(matched, channels, start, end, now=0)
    got = await funnels.report("lifecycle", breakdown="channel", **{"from": at(-200), "to": at(1)})
    assert _sorted(got) == expected(matched, channels, -200, 1, now=0, breakdown=True)
    funnels.clock.advance(days=45)  # windows close: in progress becomes dropped
    got = await funnels.report("lifecycle", **{"from": at(-200), "to": at(1)})
    assert got == expected(matched, channels, -200, 1, now=45)


async def assert_attempts_are_the_reference(funnels: Funnels, matched: dict[str, list[Matched]]) -> list[str]:
    """Each customer's counted attempt (times, stage) is the reference's; returns who has one."""
    entered = []
    for customer, events in matched.items():
        times = reference_attempt(LIFECYCLE, events)
        response = await funnels.get_customer("lifecycle", customer)
        if not times:
            assert response.status_code == 404, customer
            continue
        got = response.json()
        assert [a["at"] for a in got["attempt"]] == [at((t - T0.timestamp()) / 86400) for t in times], customer
        assert got["stage"] == LIFECYCLE.stages[len(times) - 1].key
        entered.append(customer)
    return entered


def _sorted(report: dict[str, Any]) -> dict[str, Any]:
    """The breakdown groups in the reference's order (largest first; equal sizes by value)."""
    return {**report, "breakdown": sorted(report["breakdown"], key=lambda g: (-g["customers"], g["value"]))}
